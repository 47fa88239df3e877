//! Outgoing NAT: traffic from a pool with `natOutgoing` to a destination outside every pool
//! (disabled ones included) and outside the cluster's nodes leaves with the node's address
//! (masquerade, fully random ports). Pod to pod and pod to node keep the pod's address.
//!
//! Everything lives in one nftables table of our own, `inet ferrovia`, written through
//! Debian's `nft` in JSON (the `nftables` crate). Each change replaces the whole table in
//! one batch (`add table; delete table; add table …` is atomic in the kernel), so the sets
//! never show a half-applied state, and other tables (kube-proxy's, firewalld's, the
//! operator's) are never read or touched. Connections already translated keep their
//! conntrack entries across a replacement or an agent restart.

use ferrovia_ipam::Pool;
use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Match, NATFlag, Operator, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// Our table (family `inet`).
pub const TABLE: &str = "ferrovia";
/// The chain that masquerades (nat hook postrouting, priority srcnat).
pub const CHAIN: &str = "postrouting";
/// `srcnat`: where SNAT and masquerade belong in postrouting.
const SRCNAT_PRIORITY: i32 = 100;

/// What the table is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatPlan {
    /// Every pool, disabled ones included: never masqueraded toward.
    pub pools: BTreeSet<IpNet>,
    /// Pools with `natOutgoing`: their traffic is masqueraded.
    pub nat: BTreeSet<IpNet>,
    /// The cluster's node addresses: never masqueraded toward (pod to node keeps the pod's
    /// address).
    pub nodes: BTreeSet<IpAddr>,
}

impl NatPlan {
    pub fn new<'a>(
        pools: impl IntoIterator<Item = &'a Pool>,
        nodes: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        let mut plan = NatPlan::default();
        for p in pools {
            plan.pools.insert(p.cidr);
            if p.nat_outgoing {
                plan.nat.insert(p.cidr);
            }
        }
        plan.nodes = nodes.into_iter().collect();
        plan
    }
}

/// Why the table could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("cannot run nft ({0}); install nftables (Debian: apt-get install nftables) or turn natOutgoing off on every pool")]
    NoNft(String),
    #[error("nft refused the {what} of table inet {TABLE}: {detail}")]
    Refused { what: &'static str, detail: String },
    #[error("the nft worker stopped: {0}")]
    Worker(String),
}

/// The names of the sets, per family.
struct Family {
    nat: &'static str,
    pools: &'static str,
    nodes: &'static str,
    proto: &'static str,
    addr: SetType,
    v4: bool,
}

const V4: Family = Family {
    nat: "nat4",
    pools: "pools4",
    nodes: "nodes4",
    proto: "ip",
    addr: SetType::Ipv4Addr,
    v4: true,
};
const V6: Family = Family {
    nat: "nat6",
    pools: "pools6",
    nodes: "nodes6",
    proto: "ip6",
    addr: SetType::Ipv6Addr,
    v4: false,
};

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn prefix(n: &IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(n.network().to_string().into())),
        len: u32::from(n.prefix_len()),
    }))
}

fn set(
    name: &'static str,
    addr: SetType,
    interval: bool,
    elem: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(addr),
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        elem: (!elem.is_empty()).then(|| Cow::Owned(elem)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

fn field(proto: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: proto.into(),
            field: name.into(),
        },
    )))
}

fn matches(left: Expression<'static>, op: Operator, set: &'static str) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::String(format!("@{set}").into()),
        op,
    })
}

/// The batch that replaces our table with one built from `plan`: created if absent, then
/// deleted and built again, all in one transaction.
pub fn ruleset(plan: &NatPlan) -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.add(NfListObject::Table(table()));
    for f in [&V4, &V6] {
        let of_family = |n: &&IpNet| matches!(n, IpNet::V4(_)) == f.v4;
        b.add(set(
            f.nat,
            f.addr,
            true,
            plan.nat.iter().filter(of_family).map(prefix).collect(),
        ));
        b.add(set(
            f.pools,
            f.addr,
            true,
            plan.pools.iter().filter(of_family).map(prefix).collect(),
        ));
        let nodes = plan
            .nodes
            .iter()
            .filter(|a| a.is_ipv4() == f.v4)
            .map(|a| Expression::String(a.to_string().into()))
            .collect();
        b.add(set(f.nodes, f.addr, false, nodes));
    }
    b.add(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    for f in [&V4, &V6] {
        b.add(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: CHAIN.into(),
            expr: Cow::Owned(vec![
                matches(field(f.proto, "saddr"), Operator::EQ, f.nat),
                matches(field(f.proto, "daddr"), Operator::NEQ, f.pools),
                matches(field(f.proto, "daddr"), Operator::NEQ, f.nodes),
                Statement::Masquerade(Some(NAT {
                    addr: None,
                    family: None,
                    port: None,
                    flags: Some(HashSet::from([NATFlag::FullyRandom])),
                })),
            ]),
            handle: None,
            index: None,
            comment: Some("ferrovia: natOutgoing pools to outside every pool and node".into()),
        }));
    }
    b.to_nftables()
}

/// The batch that removes our table (and nothing else); a no-op when it is absent.
pub fn removal() -> Nftables<'static> {
    let mut b = Batch::new();
    b.add(NfListObject::Table(table()));
    b.delete(NfListObject::Table(table()));
    b.to_nftables()
}

fn run_nft(what: &'static str, batch: Nftables<'static>) -> Result<(), NatError> {
    nftables::helper::apply_ruleset(&batch).map_err(|e| match e {
        nftables::helper::NftablesError::NftExecution { inner, .. } => {
            NatError::NoNft(inner.to_string())
        }
        nftables::helper::NftablesError::NftFailed { stderr, .. } => NatError::Refused {
            what,
            detail: stderr.trim().to_string(),
        },
        other => NatError::Refused {
            what,
            detail: other.to_string(),
        },
    })
}

async fn blocking(what: &'static str, batch: Nftables<'static>) -> Result<(), NatError> {
    tokio::task::spawn_blocking(move || run_nft(what, batch))
        .await
        .map_err(|e| NatError::Worker(e.to_string()))?
}

/// Replaces our table with one built from `plan`, atomically.
pub async fn apply(plan: &NatPlan) -> Result<(), NatError> {
    blocking("replacement", ruleset(plan)).await
}

/// Removes our table, atomically; other tables are not touched. Succeeds when it is absent.
pub fn remove() -> Result<(), NatError> {
    run_nft("removal", removal())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, nat: bool, disabled: bool) -> Pool {
        Pool::from_spec(
            &ferrovia_ipam::PoolSpec::new(cidr)
                .nat_outgoing(nat)
                .disabled(disabled),
        )
        .expect("pool")
    }

    #[test]
    fn the_plan_masquerades_nat_pools_only_and_excludes_every_pool_and_node() {
        let pools = [
            pool("10.244.0.0/16", true, false),
            pool("10.245.0.0/16", false, false),
            pool("10.246.0.0/16", true, true),
            pool("fd00:10:244::/48", true, false),
        ];
        let plan = NatPlan::new(
            &pools,
            ["198.18.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        let nat: Vec<String> = plan.nat.iter().map(|n| n.to_string()).collect();
        assert_eq!(nat, ["10.244.0.0/16", "10.246.0.0/16", "fd00:10:244::/48"]);
        assert_eq!(plan.pools.len(), 4);
        let json = serde_json::to_value(ruleset(&plan)).expect("json");
        let text = json.to_string();
        // Replaced in one batch: add, delete, add of our table first; nothing else named.
        let objs = json["nftables"].as_array().expect("array");
        assert_eq!(objs[0]["add"]["table"]["name"], TABLE);
        assert_eq!(objs[1]["delete"]["table"]["name"], TABLE);
        assert_eq!(objs[2]["add"]["table"]["name"], TABLE);
        for o in objs {
            let inner = o
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(|v| v.as_object())
                .and_then(|m| m.values().next())
                .expect("object");
            let t = inner
                .get("table")
                .or_else(|| inner.get("name"))
                .expect("table");
            assert_eq!(t, TABLE, "{o}");
            assert_eq!(inner["family"], "inet", "{o}");
        }
        assert!(text.contains("fully-random"), "{text}");
        assert!(
            text.contains("\"@nat4\"")
                && text.contains("\"@pools6\"")
                && text.contains("\"@nodes4\""),
            "{text}"
        );
        // An empty plan still builds a valid table with empty sets.
        let empty = serde_json::to_value(ruleset(&NatPlan::default())).expect("json");
        assert!(!empty.to_string().contains("\"elem\""));
    }

    /// Applies a batch inside a test namespace (`ip netns exec NS nft -j -f -`).
    fn apply_in(ns: &str, batch: &Nftables<'static>) {
        nftables::helper::apply_ruleset_with_args(batch, Some("ip"), ["netns", "exec", ns, "nft"])
            .unwrap_or_else(|e| panic!("nft in {ns}: {e}"));
    }

    fn nft(ns: &str, args: &str) -> String {
        let argv: Vec<&str> = args.split_whitespace().collect();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "nft"])
            .args(&argv)
            .output()
            .expect("run nft");
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn nft_takes_the_table_replaces_it_and_removes_only_ours() {
        use crate::kernel::testns::{net_lock, Netns};
        let lock = net_lock();
        let ns = Netns::new(&lock, "nat");
        // Someone else's table, with a rule: never touched.
        nft(&ns.name, "add table inet operator");
        nft(
            &ns.name,
            "add chain inet operator keep { type filter hook forward priority 0 ; }",
        );
        nft(
            &ns.name,
            "add rule inet operator keep ip saddr 192.0.2.1 counter drop",
        );
        let theirs = nft(&ns.name, "list table inet operator");

        let a = NatPlan::new(
            &[
                pool("10.244.0.0/16", true, false),
                pool("fd00:10:244::/48", true, false),
            ],
            ["198.18.0.1".parse().unwrap()],
        );
        apply_in(&ns.name, &ruleset(&a));
        let ours = nft(&ns.name, "list table inet ferrovia");
        assert!(
            ours.contains("10.244.0.0/16") && ours.contains("fd00:10:244::/48"),
            "{ours}"
        );
        assert!(ours.contains("198.18.0.1"), "{ours}");
        assert!(ours.contains("masquerade fully-random"), "{ours}");
        assert!(
            ours.contains("type nat hook postrouting priority srcnat"),
            "{ours}"
        );

        // A pool change replaces the table: the old pool is gone, the new ones are there,
        // one chain, two rules.
        let b = NatPlan::new(
            &[
                pool("10.250.0.0/16", true, false),
                pool("10.251.0.0/16", false, false),
            ],
            [],
        );
        apply_in(&ns.name, &ruleset(&b));
        let ours = nft(&ns.name, "list table inet ferrovia");
        assert!(
            !ours.contains("10.244.0.0/16") && !ours.contains("198.18.0.1"),
            "{ours}"
        );
        assert!(
            ours.contains("10.250.0.0/16") && ours.contains("10.251.0.0/16"),
            "{ours}"
        );
        assert_eq!(ours.matches("masquerade").count(), 2, "{ours}");
        assert_eq!(nft(&ns.name, "list table inet operator"), theirs);

        // Removal: ours gone (twice is fine), theirs intact.
        apply_in(&ns.name, &removal());
        apply_in(&ns.name, &removal());
        let all = nft(&ns.name, "list ruleset");
        assert!(!all.contains("ferrovia"), "{all}");
        assert_eq!(nft(&ns.name, "list table inet operator"), theirs);
    }
}
