//! The BGP speaker, sans-IO: every peer's session, the RIBs and the policy in one place.
//!
//! The driver calls the event methods with the current time and then [`Speaker::flush`]
//! once per batch of events, so that route changes caused by many UPDATEs leave as few,
//! well-packed UPDATEs as possible. It then drains the I/O it must do, [`Action`]s, with
//! [`Speaker::poll_action`], and what the rest of the agent wants to know, [`Event`]s, with
//! [`Speaker::poll_event`].
//!
//! Backpressure: the speaker counts the bytes it handed the driver for each connection
//! until the driver reports them written ([`Speaker::written`]). A peer with its send
//! window ([`SEND_WINDOW`], less with many peers: [`SEND_BUDGET`]) or more waiting gets no
//! new UPDATEs: what it still has to receive
//! stays as RIB state (a cursor over the Loc-RIB for a full resend, a bounded set of
//! changed prefixes otherwise) and is turned into UPDATEs as the queue drains. A peer that
//! stops reading stalls its own Adj-RIB-Out, never the speaker, the other peers or the
//! heap.

use crate::adj_rib_out::{AdjRibOut, PrefixIds};
use crate::fsm::{self, ConnId, Direction, DownReason, Negotiated, Session, SessionConfig, State};
use crate::journal::ChangeJournal;
use crate::message::{notif, Family, NextHop, Notification, PathAttributes, Reach, Update};
use crate::policy::{self, ExportTarget, MaxPrefixAction, PeerPolicy, Rejected};
use crate::rib::{Candidate, Change, LocRib, PrefixSet, Route, Source};
use crate::wire;
use bytes::Bytes;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Speaker-wide settings.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub families: Vec<Family>,
    /// Graceful restart time to advertise (the capability; full behaviour comes later).
    pub graceful_restart: Option<u16>,
    /// IPv4 next hop to use when a session runs over IPv6.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// IPv6 next hop to use when a session runs over IPv4.
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Route reflector (RFC 4456) with this cluster id; None: no reflection.
    pub cluster_id: Option<Ipv4Addr>,
}

/// One configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub passive: bool,
    /// Where the peer comes from, for operators ("global", "mesh", "node", "range").
    pub kind: String,
    /// The peer is a route reflector client of ours (meaningful with a cluster id).
    pub route_reflector_client: bool,
    /// Route safety: refused prefixes, prefix lists, maximum prefixes.
    pub policy: PeerPolicy,
}

/// Errors of speaker operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpeakerError {
    #[error("peer {0} is already configured; remove it first or change its address")]
    DuplicatePeer(IpAddr),
    #[error("peer {0} is not configured")]
    UnknownPeer(IpAddr),
    #[error(
        "hold time {0} s for peer {1} is invalid: use 0 or at least 3 seconds (RFC 4271 §4.2)"
    )]
    BadHoldTime(u16, IpAddr),
}

/// Bytes of UPDATEs a peer may have waiting to be written before the speaker stops
/// generating more for it (the stall threshold; one export step may overshoot it by the
/// UPDATEs of [`EXPORT_BATCH`] prefixes).
pub const SEND_WINDOW: usize = 256 * 1024;

/// How long a graceful-restart peer that came back has to send its End-of-RIB before the
/// routes it did not refresh are swept (RFC 4724 §4.2 leaves it to configuration; FRR's
/// stale-path time has the same default).
pub const STALE_ROUTES_TIME: Duration = Duration::from_secs(360);

/// The GRACEFUL_SHUTDOWN well-known community 65535:0 (RFC 8326).
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;

/// Prefixes looked at per export step of one peer (with a full [`SEND_WINDOW`]; a smaller
/// window takes proportionally fewer, at least [`MIN_EXPORT_BATCH`]).
pub const EXPORT_BATCH: usize = 2048;

/// Bytes of unwritten UPDATEs all Established peers together may have waiting in the
/// speaker's and driver's hands (not the kernel's socket buffers): each peer's window is
/// its share of this, between [`MIN_SEND_WINDOW`] and [`SEND_WINDOW`]. Up to 16 peers each
/// keep the full window; a route reflector's thousand clients, all sent the whole table at
/// once when they connect together, get 4 KiB each: their UPDATEs wait as RIB state rather
/// than as queued messages (the encoded bytes are shared between the peers of a class, but
/// each queued message still costs a reference in a channel and a writer's burst, about as
/// much as its bytes; with 16 KiB windows they were a third of a reflector's heap at
/// N = 1,000).
pub const SEND_BUDGET: usize = 4 << 20;

/// The smallest send window a peer gets, however many peers share [`SEND_BUDGET`].
pub const MIN_SEND_WINDOW: usize = 4 * 1024;

/// The fewest prefixes an export step looks at.
pub const MIN_EXPORT_BATCH: usize = 32;

/// Entries of the shared export cache (prefix × export class) before it is emptied: a
/// route reflector's clients share their exports up to this many, beyond it a full table
/// is exported without sharing rather than growing the cache.
pub const EXPORT_CACHE_LIMIT: usize = 262_144;

/// Bytes of encoded UPDATEs kept for the other peers of a class (counting
/// [`ENCODE_ENTRY_OVERHEAD`] per entry); past it the cache is emptied.
pub const ENCODE_CACHE_BYTES: usize = 4 << 20;

/// What an encode cache entry costs besides its messages' bytes (key, prefixes, map slot).
const ENCODE_ENTRY_OVERHEAD: usize = 160;

/// Capacity of the action queue kept once it is empty.
const ACTIONS_KEPT: usize = 1024;

/// Export classes (update groups) remembered before the list is emptied.
const EXPORT_CLASSES_LIMIT: usize = 4096;

/// Changed prefixes a peer may have waiting in the change journal; past this its families
/// are resent in full (a cursor over the Loc-RIB) instead, so a stalled peer costs bounded
/// memory whatever the churn.
pub const PENDING_LIMIT: usize = 65_536;

/// I/O the speaker asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to this peer.
    Connect(IpAddr),
    /// Write bytes on a connection of this peer; report them with [`Speaker::written`]
    /// once written.
    Send(IpAddr, ConnId, Bytes),
    /// Close a connection of this peer (after writing what was queued for it).
    Close(IpAddr, ConnId),
}

/// What the speaker tells the rest of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A peer's session state changed.
    PeerState {
        peer: IpAddr,
        from: State,
        to: State,
    },
    /// A peer's session failed or went down, with the reason.
    PeerError { peer: IpAddr, reason: DownReason },
    /// A peer has more prefixes than its `max_prefixes` limit (told once per crossing).
    /// `restart_after`: the session was closed with CEASE 6/1 and connects again after
    /// this long; None: the session and routes are kept (warn only).
    MaxPrefixes {
        peer: IpAddr,
        limit: u32,
        received: usize,
        restart_after: Option<Duration>,
    },
    /// Loc-RIB selections changed: take them with [`Speaker::take_changes`]. A signal only;
    /// the changed prefixes wait, coalesced, inside the speaker until the consumer pulls
    /// them, so a slow consumer (the kernel) costs a few bytes per prefix, not a queue of
    /// route copies.
    RoutesChanged,
}

/// Counters and times of one peer, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    pub updates_received: u64,
    pub updates_sent: u64,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    /// Wall-clock time the session reached Established, as the driver gave it.
    pub since: Option<SystemTime>,
    pub transitions: u64,
    /// Bytes handed to the driver on the Established connection and not written yet.
    pub send_queue: usize,
    /// Routes wait to be turned into UPDATEs for this peer (it reads slower than we
    /// send, or a resend is under way).
    pub export_waiting: bool,
    /// Routes of this peer kept as stale (graceful restart helper, RFC 4724 §4.2): the
    /// session dropped, or came back and its End-of-RIB has not refreshed them yet.
    pub stale_prefixes: usize,
    /// The peer sent End-of-RIB for every family of the current session.
    pub eor_received: bool,
    /// We sent End-of-RIB for every family of the current session.
    pub eor_sent: bool,
    /// Announced prefixes refused by import policy, per reason (each refused prefix of
    /// each UPDATE counts once).
    pub refused: BTreeMap<Rejected, u64>,
    /// Times the peer went over its maximum number of prefixes.
    pub max_prefixes_exceeded: u64,
}

/// A snapshot of one peer for status.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub config: PeerConfig,
    pub state: State,
    pub ebgp: bool,
    /// A connection was attempted (or the peer is passive and awaited).
    pub tried: bool,
    pub stats: PeerStats,
    pub last_error: Option<String>,
    pub peer_id: Option<Ipv4Addr>,
    pub families: Vec<Family>,
    /// The session was closed for going over its maximum number of prefixes and is
    /// started again at this time.
    pub restart_at: Option<Instant>,
    /// The peer's BFD session, when BFD is on for it.
    pub bfd: Option<BfdStatus>,
}

/// A peer's BFD session as the driver last reported it, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BfdStatus {
    pub state: crate::bfd::State,
    /// Our diagnostic: why our session last left Up.
    pub diag: crate::bfd::Diag,
    pub remote_state: crate::bfd::State,
    pub remote_diag: crate::bfd::Diag,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// The detection time in force, once the peer has been heard.
    pub detection_time: Option<Duration>,
    /// Times the session went Up, and times it left Up because the path failed.
    pub ups: u64,
    pub failures: u64,
    /// The BGP session is held Idle until BFD is Up again (it failed while BFD was Up).
    pub holding_bgp: bool,
}

struct Peer {
    config: PeerConfig,
    session: Session,
    ebgp: bool,
    /// Size of this peer's Adj-RIB-In (its paths live in the Loc-RIB's candidate table).
    received: usize,
    adj_out: AdjRibOut,
    /// Local socket address of each live connection (for next-hop-self).
    local_addrs: HashMap<ConnId, SocketAddr>,
    /// What still has to be sent to the peer, as RIB state.
    export: Export,
    /// Bytes handed to the driver per connection and not yet reported written.
    queued: HashMap<ConnId, usize>,
    /// The Established connection.
    conn: Option<ConnId>,
    negotiated: Option<Negotiated>,
    target: Option<ExportTarget>,
    stats: PeerStats,
    bfd: Option<BfdStatus>,
    /// Graceful restart helper state: this peer's routes kept as stale.
    stale: Option<Stale>,
    /// Families whose End-of-RIB the peer sent on the current session.
    eor_received: BTreeSet<Family>,
    /// Our End-of-RIB went out on the current session.
    eor_sent: bool,
    /// The Adj-RIB-In is over the maximum number of prefixes (told once per crossing).
    over_limit: bool,
    /// Closed for going over the maximum: start again after this long (the time is set
    /// by the event that carried the UPDATE) ...
    restart_pending: Option<Duration>,
    /// ... at this time.
    restart_at: Option<Instant>,
}

/// A graceful-restart peer's routes kept while it restarts (RFC 4724 §4.2).
#[derive(Debug)]
struct Stale {
    /// Prefixes of the peer not refreshed since the session dropped.
    prefixes: BTreeSet<IpNet>,
    /// When the rest is swept: the peer's restart time after the drop, then
    /// [`STALE_ROUTES_TIME`] once it is back.
    deadline: Instant,
}

/// The part of a peer's Adj-RIB-Out not computed yet. Bounded whatever the Loc-RIB size
/// or churn: a cursor per family being resent, a position in the speaker's change journal
/// at most [`PENDING_LIMIT`] behind its end, and the withdrawals a resend found.
#[derive(Debug, Default)]
struct Export {
    /// Families being resent in full, with the last Loc-RIB prefix already looked at
    /// (`None`: not started).
    resend: BTreeMap<Family, Option<IpNet>>,
    /// Position in the change journal: the changes from here on are still to be looked at.
    seen: u64,
    /// Advertised prefixes a completed resend found gone from the Loc-RIB.
    withdraw: Vec<IpNet>,
    /// End-of-RIB owed for these families once their first resend is complete.
    eor: Vec<Family>,
}

impl Export {
    /// Starts over with nothing to do, the journal read up to `end`.
    fn clear(&mut self, end: u64) {
        self.resend.clear();
        self.seen = end;
        self.withdraw = Vec::new();
        self.eor.clear();
    }

    /// Nothing to do with the journal ending at `end`.
    fn is_idle(&self, end: u64) -> bool {
        self.resend.is_empty()
            && self.seen >= end
            && self.withdraw.is_empty()
            && self.eor.is_empty()
    }

    /// Whether a changed prefix read from the journal is to be looked at now. A prefix
    /// still ahead of a resend cursor is covered by the resend (unless it left the
    /// Loc-RIB: the cursor would not see it).
    fn wants(
        &self,
        prefix: &IpNet,
        in_loc_rib: impl FnOnce() -> bool,
        families: &[Family],
    ) -> bool {
        let family = Family::of(prefix);
        if !families.contains(&family) {
            return false;
        }
        match self.resend.get(&family) {
            Some(cursor) if cursor.is_none_or(|c| *prefix > c) => !in_loc_rib(),
            _ => true,
        }
    }

    /// Past [`PENDING_LIMIT`] changes behind the journal's end, the peer's families are
    /// resent in full from the start instead and the journal is read from its end.
    fn fold_if_behind(&mut self, journal: &ChangeJournal, families: &[Family]) {
        if journal.behind(self.seen) > PENDING_LIMIT as u64 {
            self.seen = journal.end();
            for f in families {
                self.resend.insert(*f, None);
            }
        }
    }
}

/// One exported route shared by every peer of an export class (update group): the peers
/// that get the same attributes for the same Loc-RIB best path hold the same `Arc`, so a
/// reflector's thousand clients keep one copy per prefix and class, not one each.
struct CachedExport {
    /// The best path it was computed from (the entry is stale once that changes).
    best: Arc<Route>,
    source: SourceKey,
    out: Option<Arc<Route>>,
}

/// What of a Loc-RIB candidate an export depends on besides its route: source, learned
/// over eBGP, learned from a reflector client, the peer's BGP Identifier.
type SourceKey = (Source, bool, bool, Ipv4Addr);

/// An exported route's address, the session's 4-octet AS, the prefixes of one family.
type EncodeKey = (usize, bool, Vec<IpNet>);

/// Encoded UPDATEs by exported route, family and prefixes: the peers of a class that send
/// the same routes get the same bytes, encoded once and shared (the writer queues of a
/// thousand clients hold references to one copy, not a copy each). Kept across flushes,
/// bounded by [`ENCODE_CACHE_BYTES`].
#[derive(Default)]
struct EncodeCache {
    /// Keyed by the route's address; the entry keeps the route alive so the address is not
    /// reused while the entry exists.
    messages: HashMap<EncodeKey, (Arc<Route>, Vec<Bytes>)>,
    bytes: usize,
}

/// Where the best paths of the prefixes changed since the last flush come from. While a
/// full table arrives from one peer, every change is "now best from that peer": that peer
/// gets none of them back (split horizon) and the others get each one, so the flush needs
/// no Loc-RIB lookup per prefix to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirtySource {
    /// No change yet.
    Nothing,
    /// Every change so far made a path from this source the best one (none removed a
    /// prefix).
    One(Source),
    /// Sources differ, or a prefix left the Loc-RIB.
    Mixed,
}

impl DirtySource {
    /// Accounts for a change whose best path now comes from `source` (None: gone).
    fn add(&mut self, source: Option<Source>) {
        *self = match (*self, source) {
            (DirtySource::Nothing, Some(s)) => DirtySource::One(s),
            (DirtySource::One(a), Some(s)) if a == s => DirtySource::One(a),
            _ => DirtySource::Mixed,
        };
    }
}

/// The speaker.
pub struct Speaker {
    config: SpeakerConfig,
    /// Boxed: a `Peer` is over a kilobyte, and B-tree nodes hold eleven values each
    /// whether full or not.
    peers: BTreeMap<IpAddr, Box<Peer>>,
    loc_rib: LocRib,
    originated: BTreeMap<IpNet, Arc<Route>>,
    /// Prefixes whose Loc-RIB selection changed since the last flush.
    dirty: Vec<IpNet>,
    /// Where the new best paths of `dirty` come from.
    dirty_source: DirtySource,
    /// Prefixes changed since the last [`Speaker::take_changes`], when tracking.
    changed: Option<PrefixSet>,
    /// A [`Event::RoutesChanged`] went out and the consumer has not called
    /// [`Speaker::take_changes`] since: no other is sent, so a busy consumer finds at most
    /// one signal per call it made, whatever the number of flushes.
    changes_signalled: bool,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// The time of the event being handled (sans-IO: the driver gives it; graceful
    /// restart deadlines are set from it).
    now: Option<Instant>,
    /// New sessions say we restarted with forwarding preserved (R and F bits).
    restarting: bool,
    /// Our originated routes carry GRACEFUL_SHUTDOWN (a drain is under way).
    graceful_shutdown: bool,
    /// End-of-RIB waits: what we originate is not complete yet (see
    /// [`Speaker::hold_end_of_rib`]).
    hold_eor: bool,
    /// Export targets without the peer address: peers with equal ones form an export class.
    classes: Vec<ExportTarget>,
    /// Exports by prefix and class, shared by the class's peers.
    export_cache: HashMap<(IpNet, u32), CachedExport>,
    encode_cache: EncodeCache,
    /// Numbers of the prefixes in the peers' Adj-RIBs-Out.
    prefix_ids: PrefixIds,
    /// Prefixes whose selection changed, until every Established peer has looked at them.
    journal: ChangeJournal,
    /// Each peer's send window now ([`SEND_BUDGET`] shared by the Established peers; set at
    /// every flush).
    window: usize,
}

/// A peer's send window when `established` peers share [`SEND_BUDGET`].
pub fn send_window(established: usize) -> usize {
    (SEND_BUDGET / established.max(1)).clamp(MIN_SEND_WINDOW, SEND_WINDOW)
}

/// Prefixes per export step for a send window: proportional to it, [`EXPORT_BATCH`] for a
/// full [`SEND_WINDOW`], so one step overshoots a small window by a small amount too.
fn export_batch_for(window: usize) -> usize {
    (EXPORT_BATCH * window / SEND_WINDOW).clamp(MIN_EXPORT_BATCH, EXPORT_BATCH)
}

impl Speaker {
    pub fn new(config: SpeakerConfig) -> Self {
        Speaker {
            config,
            peers: BTreeMap::new(),
            loc_rib: LocRib::default(),
            originated: BTreeMap::new(),
            dirty: Vec::new(),
            dirty_source: DirtySource::Nothing,
            changed: None,
            changes_signalled: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            now: None,
            restarting: false,
            graceful_shutdown: false,
            hold_eor: false,
            classes: Vec::new(),
            export_cache: HashMap::new(),
            encode_cache: EncodeCache::default(),
            prefix_ids: PrefixIds::default(),
            journal: ChangeJournal::default(),
            window: SEND_WINDOW,
        }
    }

    /// While held, sessions get our routes but not End-of-RIB: the agent holds it at start
    /// until it has originated everything it should (its IPAM blocks come from the
    /// datastore a moment after the sessions may be up). A peer that helps our graceful
    /// restart sweeps what we did not send again at our End-of-RIB, so an early one would
    /// withdraw our blocks for that moment. Releasing sends the End-of-RIBs owed at the next
    /// flush.
    pub fn hold_end_of_rib(&mut self, hold: bool) {
        self.hold_eor = hold;
    }

    /// Whether our OPENs say we restarted with our forwarding state kept (RFC 4724 R and
    /// F bits). Each peer gets them until its first session is Established; later
    /// reconnects are ordinary ones. Set it only for a real restart: same boot, within
    /// the restart time, our routes still in the kernel.
    pub fn set_restarting(&mut self, restarting: bool) {
        self.restarting = restarting;
        for p in self.peers.values_mut() {
            if p.negotiated.is_none() {
                p.session.set_restarting(restarting);
            }
        }
    }

    /// Every peer is Established and End-of-RIB went both ways on every session (the
    /// initial exchange after a start or restart is complete). Peers that are not
    /// Established count as not synchronised.
    pub fn synchronised(&self) -> bool {
        self.peers.values().all(|p| {
            p.negotiated.as_ref().is_some_and(|n| {
                p.eor_sent && n.families.iter().all(|f| p.eor_received.contains(f))
            })
        })
    }

    /// Whether this peer's route for `prefix` is stale (kept by the graceful restart
    /// helper, not yet refreshed).
    pub fn is_stale(&self, peer: IpAddr, prefix: &IpNet) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.stale.as_ref())
            .is_some_and(|s| s.prefixes.contains(prefix))
    }

    pub fn config(&self) -> &SpeakerConfig {
        &self.config
    }

    // ----- configuration -----

    /// Adds a peer and starts its session.
    pub fn add_peer(&mut self, now: Instant, config: PeerConfig) -> Result<(), SpeakerError> {
        if self.peers.contains_key(&config.address) {
            return Err(SpeakerError::DuplicatePeer(config.address));
        }
        if matches!(config.hold_time, 1 | 2) {
            return Err(SpeakerError::BadHoldTime(config.hold_time, config.address));
        }
        let session = Session::new(SessionConfig {
            local_as: self.config.local_as,
            peer_as: config.remote_as,
            local_id: self.config.router_id,
            hold_time: config.hold_time,
            connect_retry: config.connect_retry,
            max_retry: Duration::from_secs(60).max(config.connect_retry),
            passive: config.passive,
            families: self.config.families.clone(),
            graceful_restart: self.config.graceful_restart,
        });
        let address = config.address;
        let ebgp = config.remote_as != self.config.local_as;
        self.peers.insert(
            address,
            Box::new(Peer {
                config,
                session,
                ebgp,
                received: 0,
                adj_out: AdjRibOut::default(),
                local_addrs: HashMap::new(),
                export: Export::default(),
                queued: HashMap::new(),
                conn: None,
                negotiated: None,
                target: None,
                stats: PeerStats::default(),
                stale: None,
                eor_received: BTreeSet::new(),
                eor_sent: false,
                over_limit: false,
                restart_pending: None,
                restart_at: None,
                bfd: None,
            }),
        );
        self.now = Some(now);
        let restarting = self.restarting;
        if let Some(p) = self.peers.get_mut(&address) {
            p.session.set_restarting(restarting);
            p.session.start(now);
        }
        self.drain_session(address);
        Ok(())
    }

    /// Stops a peer's session with CEASE/Peer De-configured and forgets it and its routes.
    pub fn remove_peer(&mut self, address: IpAddr) -> Result<(), SpeakerError> {
        let p = self
            .peers
            .get_mut(&address)
            .ok_or(SpeakerError::UnknownPeer(address))?;
        p.session.stop(crate::message::notif::PEER_DECONFIGURED);
        self.drain_session(address);
        self.flush_peer_routes(address);
        if let Some(mut p) = self.peers.remove(&address) {
            p.adj_out.clear(&mut self.prefix_ids);
        }
        Ok(())
    }

    /// Makes the speaker a route reflector with this cluster id (RFC 4456), or (None) an
    /// ordinary speaker. A change re-exports everything to every Established iBGP peer, so
    /// reflected routes appear or go.
    pub fn set_cluster_id(&mut self, cluster_id: Option<Ipv4Addr>) {
        if self.config.cluster_id == cluster_id {
            return;
        }
        self.config.cluster_id = cluster_id;
        for p in self.peers.values_mut() {
            let Some(t) = p.target.as_mut() else {
                continue;
            };
            t.cluster_id = cluster_id;
            if let Some(n) = p.negotiated.as_ref() {
                if !p.ebgp {
                    for f in &n.families {
                        p.export.resend.insert(*f, None);
                    }
                }
            }
        }
    }

    /// Configured peers.
    pub fn peer_addresses(&self) -> Vec<IpAddr> {
        self.peers.keys().copied().collect()
    }

    /// Whether this address is a configured peer (the driver refuses others).
    pub fn is_peer(&self, address: &IpAddr) -> bool {
        self.peers.contains_key(address)
    }

    /// Sends CEASE/Administrative Shutdown on every session — wrapped in Cease/Hard Reset
    /// for peers that negotiated the RFC 8538 N bit, since to them a plain Cease means
    /// "keep my routes as stale" — and forgets the routes learned from every peer.
    pub fn shutdown(&mut self) {
        let addrs = self.peer_addresses();
        let why = Notification::new(notif::CEASE, notif::ADMINISTRATIVE_SHUTDOWN);
        for a in addrs {
            let n_bit = self.peers.get(&a).is_some_and(|p| self.n_bit(p));
            if let Some(p) = self.peers.get_mut(&a) {
                if n_bit {
                    p.session.stop_with(Notification::hard_reset(&why));
                } else {
                    p.session.stop_with(why.clone());
                }
            }
            self.drain_session(a);
            self.flush_peer_routes(a);
        }
    }

    /// Re-advertises every originated prefix with (or without) the GRACEFUL_SHUTDOWN
    /// community (RFC 8326), so that peers move traffic to other paths before we withdraw.
    pub fn set_graceful_shutdown(&mut self, on: bool) {
        if self.graceful_shutdown == on {
            return;
        }
        self.graceful_shutdown = on;
        let originated: Vec<(IpNet, Vec<u32>)> = self
            .originated
            .iter()
            .map(|(p, r)| (*p, r.attrs.communities.clone()))
            .collect();
        for (prefix, mut communities) in originated {
            communities.retain(|c| *c != GRACEFUL_SHUTDOWN);
            self.originate(prefix, communities);
        }
    }

    /// Whether the RFC 8538 N bit was negotiated with this peer (both sides sent it; we
    /// send it whenever we send graceful restart).
    fn n_bit(&self, p: &Peer) -> bool {
        self.config.graceful_restart.is_some()
            && p.negotiated
                .as_ref()
                .and_then(|n| n.peer_open.capabilities.graceful_restart.as_ref())
                .is_some_and(|g| g.notification)
    }

    // ----- BFD -----

    /// The driver reports the state of `peer`'s BFD session (RFC 5882 §4.3). `failed`: it
    /// just left Up because the path failed (not for an AdminDown on either side). Then the
    /// BGP session goes down at once — CEASE, routes out of the Loc-RIB with no graceful
    /// restart retention — and stays Idle until BFD reports Up again.
    pub fn bfd_changed(&mut self, now: Instant, peer: IpAddr, mut status: BfdStatus, failed: bool) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let holding = p.bfd.as_ref().is_some_and(|b| b.holding_bgp);
        status.holding_bgp = holding;
        if failed {
            status.holding_bgp = true;
            let why = format!(
                "{} (remote said {}, {})",
                status.diag.name(),
                status.remote_state.name(),
                status.remote_diag.name()
            );
            p.bfd = Some(status);
            p.session.bfd_down(why);
            self.drain_session(peer);
            return;
        }
        if holding && status.state == crate::bfd::State::Up {
            status.holding_bgp = false;
            p.bfd = Some(status);
            p.session.start(now);
            self.drain_session(peer);
            return;
        }
        p.bfd = Some(status);
    }

    /// The driver's latest view of `peer`'s BFD session (timers, remote state), between
    /// state changes; whether BGP is held stays as it is.
    pub fn bfd_refresh(&mut self, peer: IpAddr, mut status: BfdStatus) {
        if let Some(p) = self.peers.get_mut(&peer) {
            status.holding_bgp = p.bfd.as_ref().is_some_and(|b| b.holding_bgp);
            p.bfd = Some(status);
        }
    }

    /// BFD was turned off for `peer`: forget its status and release a held session.
    pub fn bfd_removed(&mut self, now: Instant, peer: IpAddr) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.bfd.take().is_some_and(|b| b.holding_bgp) {
            p.session.start(now);
            self.drain_session(peer);
        }
    }

    // ----- local routes -----

    /// Originates (or updates) a local prefix with the given communities.
    pub fn originate(&mut self, prefix: IpNet, mut communities: Vec<u32>) {
        let prefix = prefix.trunc();
        if self.graceful_shutdown && !communities.contains(&GRACEFUL_SHUTDOWN) {
            communities.push(GRACEFUL_SHUTDOWN);
        }
        let unspecified = match prefix {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let route = Arc::new(Route {
            attrs: PathAttributes {
                communities,
                ..Default::default()
            },
            next_hop: NextHop::new(unspecified),
        });
        self.originated.insert(prefix, route.clone());
        let cand = Candidate {
            source: Source::Local,
            route,
            ebgp: false,
            peer_id: Ipv4Addr::UNSPECIFIED,
        };
        self.rib_update(prefix, Source::Local, Some(cand));
    }

    /// Withdraws a local prefix. Returns whether it was originated.
    pub fn withdraw(&mut self, prefix: IpNet) -> bool {
        let prefix = prefix.trunc();
        let had = self.originated.remove(&prefix).is_some();
        if had {
            self.rib_update(prefix, Source::Local, None);
        }
        had
    }

    /// Locally originated prefixes.
    pub fn originated(&self) -> impl Iterator<Item = &IpNet> {
        self.originated.keys()
    }

    // ----- I/O events -----

    /// A TCP connection to/from `peer` is up.
    pub fn connected(
        &mut self,
        now: Instant,
        peer: IpAddr,
        conn: ConnId,
        dir: Direction,
        local: SocketAddr,
    ) {
        self.now = Some(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.local_addrs.insert(conn, local);
            p.session.connected(now, conn, dir);
        }
        self.drain_session(peer);
    }

    /// The outgoing connection attempt to `peer` failed.
    pub fn connect_failed(&mut self, now: Instant, peer: IpAddr) {
        self.now = Some(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.session.connect_failed(now);
        }
        self.drain_session(peer);
    }

    /// A connection closed (peer closed, reset, or error).
    pub fn closed(&mut self, now: Instant, peer: IpAddr, conn: ConnId) {
        self.now = Some(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.session.closed(now, conn);
            p.local_addrs.remove(&conn);
            p.queued.remove(&conn);
        }
        self.drain_session(peer);
    }

    /// Bytes read from a connection. `wall` is the wall-clock time of the same moment as
    /// `now`: a session that comes up here records it as its `since` (the core reads no
    /// clock; only the driver does).
    pub fn received(
        &mut self,
        now: Instant,
        wall: SystemTime,
        peer: IpAddr,
        conn: ConnId,
        bytes: &[u8],
    ) {
        self.now = Some(now);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.session.received(now, conn, bytes);
        }
        self.drain_session_at(peer, Some(wall));
        if let Some(p) = self.peers.get_mut(&peer) {
            if let Some(after) = p.restart_pending.take() {
                p.restart_at = Some(now + after);
            }
        }
    }

    /// The driver wrote `bytes` of what it was given for a connection: that much room is
    /// free again in the peer's send queue (UPDATEs resume at the next flush).
    pub fn written(&mut self, peer: IpAddr, conn: ConnId, bytes: usize) {
        if let Some(q) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.queued.get_mut(&conn))
        {
            *q = q.saturating_sub(bytes);
        }
    }

    /// Fires every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let stale_due: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.stale.as_ref().is_some_and(|s| s.deadline <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in stale_due {
            self.sweep_stale(a, None);
        }
        let due: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.poll_timeout().is_some_and(|d| d <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            if let Some(p) = self.peers.get_mut(&a) {
                p.session.handle_timeout(now);
            }
            self.drain_session(a);
        }
        let restart: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.restart_at.is_some_and(|d| d <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in restart {
            if let Some(p) = self.peers.get_mut(&a) {
                p.restart_at = None;
                p.session.start(now);
            }
            self.drain_session(a);
        }
    }

    /// The earliest deadline across every session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                [
                    p.session.poll_timeout(),
                    p.stale.as_ref().map(|s| s.deadline),
                    p.restart_at,
                ]
            })
            .flatten()
            .min()
    }

    /// Next I/O for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        let a = self.actions.pop_front();
        // The queue of a flush to a thousand peers is large; its capacity is not kept.
        if a.is_none() && self.actions.capacity() > ACTIONS_KEPT {
            self.actions = VecDeque::new();
        }
        a
    }

    /// Next notification for the agent.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Start (or stop) collecting Loc-RIB changes for [`Speaker::take_changes`].
    pub fn track_changes(&mut self, on: bool) {
        self.changed = on.then(PrefixSet::default);
    }

    /// Whether changes wait for [`Speaker::take_changes`].
    pub fn has_changes(&self) -> bool {
        self.changed.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// Up to `max` Loc-RIB changes since the last call, one per prefix with its current
    /// selection; the rest wait for the next call.
    pub fn take_changes(&mut self, max: usize) -> Vec<Change> {
        self.changes_signalled = false;
        let Some(changed) = self.changed.as_mut() else {
            return Vec::new();
        };
        // Taken in order, so the Loc-RIB is read in one walk.
        let out = changed.take(max);
        let best = self.loc_rib.selections_sorted(&out);
        out.into_iter()
            .zip(best)
            .map(|(prefix, best)| Change { prefix, best })
            .collect()
    }

    /// Turns the route changes since the last flush into UPDATEs for every Established
    /// peer, as far as each peer's send queue has room; the rest waits in the peer's
    /// export state for the next flush after [`Speaker::written`].
    pub fn flush(&mut self) {
        self.window = send_window(
            self.peers
                .values()
                .filter(|p| p.negotiated.is_some())
                .count(),
        );
        let mut dirty = std::mem::take(&mut self.dirty);
        let source = std::mem::replace(&mut self.dirty_source, DirtySource::Nothing);
        // Every changed prefix now has its best path from this source (and none is gone).
        let uniform = match source {
            DirtySource::One(s) => Some(s),
            DirtySource::Nothing | DirtySource::Mixed => None,
        };
        // A peer has nothing to do with the changes when every one of them is a best path
        // it sent itself (split horizon) and it holds no export to withdraw: a full table
        // from one feeder costs that session nothing, not even a sort.
        let nothing_for = |addr: &IpAddr, p: &Peer| {
            p.negotiated.is_none() || (uniform == Some(Source::Peer(*addr)) && p.adj_out.is_empty())
        };
        let wanted = self.peers.iter().any(|(a, p)| !nothing_for(a, p));
        if !dirty.is_empty() && (wanted || !self.export_cache.is_empty()) {
            dirty.sort_unstable();
            dirty.dedup();
            if !self.export_cache.is_empty() {
                for q in &dirty {
                    for k in 0..self.classes.len() as u32 {
                        self.export_cache.remove(&(*q, k));
                    }
                }
            }
        }
        if !dirty.is_empty() && wanted {
            // Recorded once for every peer; each reads them as its send window allows.
            let before = self.journal.end();
            self.journal.record(&dirty);
            let end = self.journal.end();
            for (addr, p) in self.peers.iter_mut() {
                let Some(n) = p.negotiated.as_ref() else {
                    continue;
                };
                if p.export.seen >= before && nothing_for(addr, p) {
                    // Nothing in these changes for the peer and nothing read before them.
                    p.export.seen = end;
                }
                p.export.fold_if_behind(&self.journal, &n.families);
            }
        }
        let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            self.flush_peer(addr);
        }
        // What every Established peer has read is not needed any more.
        let read = self
            .peers
            .values()
            .filter(|p| p.negotiated.is_some())
            .map(|p| p.export.seen)
            .min()
            .unwrap_or_else(|| self.journal.end());
        self.journal.drop_before(read);
        if self.has_changes() && !self.changes_signalled {
            self.changes_signalled = true;
            self.events.push_back(Event::RoutesChanged);
        }
    }

    /// Asks every Established peer that supports it to resend its routes.
    pub fn refresh_all(&mut self) {
        for p in self.peers.values_mut() {
            for f in &self.config.families {
                p.session.request_refresh(*f);
            }
        }
        let addrs = self.peer_addresses();
        for a in addrs {
            self.drain_session(a);
        }
    }

    // ----- views -----

    pub fn loc_rib(&self) -> &LocRib {
        &self.loc_rib
    }

    /// Changed prefixes recorded for the peers and not yet read by every Established one
    /// (at most [`PENDING_LIMIT`] after a flush, plus that flush's own).
    pub fn unread_changes(&self) -> usize {
        self.journal.len()
    }

    /// Status of every peer.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .map(|p| {
                let mut stats = p.stats.clone();
                stats.prefixes_received = p.received;
                stats.prefixes_sent = p.adj_out.len();
                stats.send_queue = p.send_queue();
                stats.export_waiting =
                    p.negotiated.is_some() && !p.export.is_idle(self.journal.end());
                stats.stale_prefixes = p.stale.as_ref().map_or(0, |s| s.prefixes.len());
                stats.eor_sent = p.eor_sent;
                stats.eor_received = p
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.iter().all(|f| p.eor_received.contains(f)));
                PeerStatus {
                    config: p.config.clone(),
                    state: p.session.state(),
                    ebgp: p.ebgp,
                    tried: p.session.tried(),
                    stats,
                    last_error: p.session.last_error().map(|e| e.to_string()),
                    peer_id: p.negotiated.as_ref().map(|n| n.peer_open.bgp_id),
                    families: p
                        .negotiated
                        .as_ref()
                        .map(|n| n.families.clone())
                        .unwrap_or_default(),
                    restart_at: p.restart_at,
                    bfd: p.bfd.clone(),
                }
            })
            .collect()
    }

    /// The Adj-RIB-In of a peer (after import policy).
    pub fn adj_rib_in(&self, peer: IpAddr) -> Vec<(IpNet, Arc<Route>)> {
        let source = Source::Peer(peer);
        self.loc_rib
            .prefixes_from(source)
            .into_iter()
            .filter_map(|p| {
                self.loc_rib
                    .candidate(&p, source)
                    .map(|c| (p, c.route.clone()))
            })
            .collect()
    }

    // ----- internals -----

    fn drain_session(&mut self, addr: IpAddr) {
        self.drain_session_at(addr, None);
    }

    /// Carries out what a session asked for. `wall`: the wall-clock time of the event
    /// being handled, when the caller gave it.
    fn drain_session_at(&mut self, addr: IpAddr, wall: Option<SystemTime>) {
        while let Some(out) = self
            .peers
            .get_mut(&addr)
            .and_then(|p| p.session.poll_output())
        {
            match out {
                fsm::Output::Connect => self.actions.push_back(Action::Connect(addr)),
                fsm::Output::Send(c, b) => {
                    let Some(p) = self.peers.get_mut(&addr) else {
                        continue;
                    };
                    let queued = p.queued.entry(c).or_default();
                    // A KEEPALIVE behind a full queue is dropped: the peer has unread
                    // messages ahead of it, and reading any of them restarts its hold
                    // timer just the same (RFC 4271 §4.4). So a peer that stops reading
                    // cannot make keepalives pile up either.
                    if *queued >= self.window && is_keepalive(&b) {
                        continue;
                    }
                    *queued += b.len();
                    self.actions
                        .push_back(Action::Send(addr, c, Bytes::from(b)))
                }
                fsm::Output::Close(c) => {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.local_addrs.remove(&c);
                        p.queued.remove(&c);
                    }
                    self.actions.push_back(Action::Close(addr, c))
                }
                fsm::Output::StateChanged { from, to } => {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.stats.transitions += 1;
                    }
                    self.events.push_back(Event::PeerState {
                        peer: addr,
                        from,
                        to,
                    })
                }
                fsm::Output::Established(conn, n) => self.on_established(addr, conn, *n, wall),
                fsm::Output::Down(reason) => {
                    self.on_down(addr, &reason);
                    self.events
                        .push_back(Event::PeerError { peer: addr, reason });
                }
                fsm::Output::Error(reason) => self
                    .events
                    .push_back(Event::PeerError { peer: addr, reason }),
                fsm::Output::Update(u) => self.on_update(addr, u),
                fsm::Output::RouteRefresh(f) => {
                    if let Some(p) = self.peers.get_mut(&addr) {
                        p.export.resend.insert(f, None);
                    }
                }
            }
        }
        // While we keep a restarting peer's routes as stale, reconnect without backing off.
        if let Some(p) = self.peers.get_mut(&addr) {
            let away = p.stale.is_some();
            p.session.set_steady_retry(away);
        }
    }

    fn on_established(
        &mut self,
        addr: IpAddr,
        conn: ConnId,
        n: Negotiated,
        wall: Option<SystemTime>,
    ) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        // A v4-mapped local address means an IPv4 session on a dual-stack socket.
        let local = p.local_addrs.get(&conn).map(|s| s.ip().to_canonical());
        let next_hop_v4 = match local {
            Some(IpAddr::V4(a)) => Some(a),
            _ => self.config.next_hop_v4,
        };
        let next_hop_v6 = match local {
            Some(IpAddr::V6(a)) => Some(a),
            _ => self.config.next_hop_v6,
        };
        p.target = Some(ExportTarget {
            local_as: self.config.local_as,
            local_id: self.config.router_id,
            peer: addr,
            ebgp: p.ebgp,
            next_hop_v4,
            next_hop_v6,
            cluster_id: self.config.cluster_id,
            client: p.config.route_reflector_client,
        });
        p.export.clear(self.journal.end());
        p.export.resend = n.families.iter().map(|f| (*f, None)).collect();
        p.export.eor = n.families.clone();
        p.conn = Some(conn);
        p.adj_out.clear(&mut self.prefix_ids);
        p.stats.since = wall;
        p.eor_received.clear();
        p.eor_sent = false;
        // Our next OPEN to this peer is an ordinary one: the restart is over for it.
        p.session.set_restarting(false);
        // Graceful restart helper (RFC 4724 §4.2): the peer is back. Its stale routes of
        // families it kept forwarding for (F bit) wait for its End-of-RIB; the others go.
        let peer_gr = n.peer_open.capabilities.graceful_restart.clone();
        p.negotiated = Some(n);
        if p.stale.is_some() {
            let kept: Vec<Family> = match (&self.config.graceful_restart, &peer_gr) {
                (Some(_), Some(g)) => g
                    .families
                    .iter()
                    .filter(|(_, forwarding)| *forwarding)
                    .map(|(f, _)| *f)
                    .collect(),
                _ => Vec::new(),
            };
            let now = self.now;
            let gone: Vec<IpNet> = p
                .stale
                .as_ref()
                .map(|s| {
                    s.prefixes
                        .iter()
                        .filter(|q| !kept.contains(&Family::of(q)))
                        .copied()
                        .collect()
                })
                .unwrap_or_default();
            if let (Some(s), Some(now)) = (p.stale.as_mut(), now) {
                s.deadline = now + STALE_ROUTES_TIME;
            }
            self.drop_stale(addr, gone);
        }
    }

    /// Whether the graceful restart helper keeps a peer's routes as stale after its
    /// session went down for `reason`, and for which families and how long (RFC 4724 §4.2,
    /// RFC 8538 §4).
    fn graceful_keep(&self, p: &Peer, reason: &DownReason) -> Option<(Duration, Vec<Family>)> {
        self.config.graceful_restart?;
        let n = p.negotiated.as_ref()?;
        let gr = n.peer_open.capabilities.graceful_restart.as_ref()?;
        if gr.restart_time == 0 || p.stale.is_some() {
            // No time to wait, or it went down again before refreshing its routes.
            return None;
        }
        let keep = match reason {
            DownReason::ConnectionLost | DownReason::ConnectFailed => true,
            // The peer restarted: its new OPEN closed the old session (RFC 4724 §4).
            DownReason::Sent(x)
                if x.code == notif::CEASE
                    && x.subcode == notif::CONNECTION_COLLISION_RESOLUTION =>
            {
                true
            }
            DownReason::Sent(x) | DownReason::Received(x) => self.n_bit(p) && !x.is_hard_reset(),
            // BFD saw the path fail: nothing to wait for (RFC 5882 §4.3).
            DownReason::BfdDown(_) => false,
        };
        let families = gr
            .families
            .iter()
            .map(|(f, _)| *f)
            .filter(|f| n.families.contains(f))
            .collect();
        keep.then(|| (Duration::from_secs(u64::from(gr.restart_time)), families))
    }

    /// Withdraws some of a peer's stale routes.
    fn drop_stale(&mut self, addr: IpAddr, prefixes: Vec<IpNet>) {
        for prefix in prefixes {
            if let Some(s) = self.peers.get_mut(&addr).and_then(|p| p.stale.as_mut()) {
                s.prefixes.remove(&prefix);
            }
            self.rib_update(prefix, Source::Peer(addr), None);
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            if p.stale.as_ref().is_some_and(|s| s.prefixes.is_empty()) {
                p.stale = None;
            }
        }
    }

    /// Withdraws a peer's stale routes of `family` (all of them with `None`): its
    /// End-of-RIB arrived, or the time to refresh them is over.
    fn sweep_stale(&mut self, addr: IpAddr, family: Option<Family>) {
        let gone: Vec<IpNet> = self
            .peers
            .get(&addr)
            .and_then(|p| p.stale.as_ref())
            .map(|s| {
                s.prefixes
                    .iter()
                    .filter(|q| family.is_none_or(|f| Family::of(q) == f))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        self.drop_stale(addr, gone);
        if family.is_none() {
            if let Some(p) = self.peers.get_mut(&addr) {
                p.stale = None;
            }
        }
    }

    fn on_down(&mut self, addr: IpAddr, reason: &DownReason) {
        let keep = self
            .peers
            .get(&addr)
            .and_then(|p| self.graceful_keep(p, reason))
            .zip(self.now);
        match keep {
            Some(((restart_time, families), now)) => {
                // Graceful restart helper: the peer's routes stay (in the Loc-RIB and the
                // kernel) as stale until it is back and refreshes them, or its restart
                // time ends; those of families it did not ask us to keep go now.
                let mut stale = BTreeSet::new();
                for prefix in self.loc_rib.prefixes_from(Source::Peer(addr)) {
                    if families.contains(&Family::of(&prefix)) {
                        stale.insert(prefix);
                    } else {
                        self.rib_update(prefix, Source::Peer(addr), None);
                    }
                }
                if let Some(p) = self.peers.get_mut(&addr) {
                    p.stale = (!stale.is_empty()).then(|| Stale {
                        prefixes: stale,
                        deadline: now + restart_time,
                    });
                }
            }
            None => self.flush_peer_routes(addr),
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            p.eor_received.clear();
            p.eor_sent = false;
            p.adj_out.clear(&mut self.prefix_ids);
            p.export.clear(self.journal.end());
            p.conn = None;
            p.negotiated = None;
            p.target = None;
            p.stats.since = None;
        }
    }

    fn flush_peer_routes(&mut self, addr: IpAddr) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        p.stale = None;
        for prefix in self.loc_rib.prefixes_from(Source::Peer(addr)) {
            self.rib_update(prefix, Source::Peer(addr), None);
        }
    }

    fn on_update(&mut self, addr: IpAddr, u: Update) {
        let (local_as, local_id, cluster_id) = (
            self.config.local_as,
            self.config.router_id,
            self.config.cluster_id,
        );
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        p.stats.updates_received += 1;
        let families = p
            .negotiated
            .as_ref()
            .map(|n| n.families.clone())
            .unwrap_or_default();
        let ebgp = p.ebgp;
        let peer_id = p
            .negotiated
            .as_ref()
            .map(|n| n.peer_open.bgp_id)
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        if p.restart_pending.is_some() || p.restart_at.is_some() {
            // Closed for going over the maximum: what is still queued from the peer goes.
            return;
        }
        let policy = p.config.policy.clone();
        let source = Source::Peer(addr);
        if let Some(f) = u.end_of_rib {
            p.eor_received.insert(f);
            self.sweep_stale(addr, Some(f));
            return;
        }
        if let Some(s) = p.stale.as_mut() {
            // Refreshed (or withdrawn) by the peer: not stale any more.
            for prefix in u
                .withdrawn
                .iter()
                .chain(u.reach.iter().flat_map(|r| &r.prefixes))
            {
                s.prefixes.remove(prefix);
            }
            if s.prefixes.is_empty() {
                p.stale = None;
            }
        }
        for prefix in &u.withdrawn {
            self.rib_update(*prefix, source, None);
        }
        let mut announced: Option<Family> = None;
        let mut refused: BTreeMap<Rejected, u64> = BTreeMap::new();
        if let Some(attrs) = &u.attributes {
            for reach in &u.reach {
                let route = Route {
                    attrs: attrs.clone(),
                    next_hop: reach.next_hop,
                };
                // RFC 8326 §4.1: a route its sender is about to withdraw (GRACEFUL_SHUTDOWN)
                // gets the lowest LOCAL_PREF, so traffic moves to other paths first.
                // One candidate for every prefix of the UPDATE: the Loc-RIB shares it.
                let imported =
                    policy::import(route, ebgp, local_as, local_id, cluster_id).map(|mut r| {
                        if r.attrs.communities.contains(&GRACEFUL_SHUTDOWN) {
                            r.attrs.local_pref = Some(0);
                        }
                        Arc::new(Candidate {
                            source,
                            route: Arc::new(r),
                            ebgp,
                            peer_id,
                        })
                    });
                self.loc_rib.warm(&reach.prefixes);
                for prefix in &reach.prefixes {
                    if !families.contains(&Family::of(prefix)) {
                        continue;
                    }
                    let checked = match policy.refuse(prefix) {
                        Some(why) => Err(why),
                        None => imported.as_ref().map_err(|why| *why),
                    };
                    let cand = match checked {
                        Ok(cand) => {
                            announced.get_or_insert(Family::of(prefix));
                            Some(cand)
                        }
                        Err(why) => {
                            *refused.entry(why).or_default() += 1;
                            None
                        }
                    };
                    self.rib_update_shared(*prefix, source, cand);
                }
            }
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            for (why, n) in refused {
                *p.stats.refused.entry(why).or_default() += n;
            }
        }
        self.check_max_prefixes(addr, announced.unwrap_or(Family::Ipv4Unicast));
    }

    /// Acts on the peer's maximum number of prefixes after an UPDATE that announced
    /// prefixes of `family`.
    fn check_max_prefixes(&mut self, addr: IpAddr, family: Family) {
        let n_bit = self.peers.get(&addr).is_some_and(|p| self.n_bit(p));
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some(max) = p.config.policy.max_prefixes else {
            return;
        };
        let over = p.received > usize::try_from(max.limit).unwrap_or(usize::MAX);
        if !over {
            p.over_limit = false;
            return;
        }
        if p.over_limit {
            return;
        }
        p.over_limit = true;
        p.stats.max_prefixes_exceeded += 1;
        let received = p.received;
        let restart_after = match max.action {
            MaxPrefixAction::Warn => None,
            MaxPrefixAction::Restart(after) => Some(after),
        };
        self.events.push_back(Event::MaxPrefixes {
            peer: addr,
            limit: max.limit,
            received,
            restart_after,
        });
        if let Some(after) = restart_after {
            // RFC 4486 §4: the data is AFI (2 octets), SAFI (1) and the limit (4).
            let (afi, safi) = family.afi_safi();
            let mut data = afi.to_be_bytes().to_vec();
            data.push(safi);
            data.extend_from_slice(&max.limit.to_be_bytes());
            p.over_limit = false;
            p.restart_pending = Some(after);
            let why = Notification::with_data(notif::CEASE, notif::MAXIMUM_PREFIXES_REACHED, data);
            // With the RFC 8538 N bit a plain Cease would keep the routes on both sides as
            // stale; going over the limit must drop them (RFC 8538 §5): Hard Reset.
            p.session.stop_for_error(if n_bit {
                Notification::hard_reset(&why)
            } else {
                why
            });
            self.drain_session(addr);
        }
    }

    fn rib_update(&mut self, prefix: IpNet, source: Source, cand: Option<Candidate>) {
        let cand = cand.map(Arc::new);
        self.rib_update_shared(prefix, source, cand.as_ref());
    }

    fn rib_update_shared(&mut self, prefix: IpNet, source: Source, cand: Option<&Arc<Candidate>>) {
        let u = self.loc_rib.update_shared(prefix, source, cand);
        if let Source::Peer(a) = source {
            if let Some(p) = self.peers.get_mut(&a) {
                p.received = p.received + usize::from(u.has) - usize::from(u.had);
            }
        }
        if u.best_changed {
            self.dirty.push(prefix);
            self.dirty_source.add(u.best_source);
            if let Some(c) = self.changed.as_mut() {
                c.insert(prefix);
            }
        }
    }

    /// The export class of a target (its index in `classes`, added if new).
    fn class_of(&mut self, target: &ExportTarget) -> u32 {
        let key = ExportTarget {
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ..*target
        };
        if let Some(k) = self.classes.iter().position(|c| *c == key) {
            return k as u32;
        }
        if self.classes.len() >= EXPORT_CLASSES_LIMIT {
            // The class numbers are reused: the Adj-RIBs-Out stop sharing their routes
            // by class number first.
            for p in self.peers.values_mut() {
                p.adj_out.detach(&self.prefix_ids);
            }
            self.prefix_ids.forget_classes();
            self.classes.clear();
            self.export_cache.clear();
        }
        self.classes.push(key);
        (self.classes.len() - 1) as u32
    }

    /// The route to advertise to `p` for `prefix`, or None. Computed once per export
    /// class and Loc-RIB best path and shared (see [`CachedExport`]).
    fn export_for(
        &mut self,
        addr: IpAddr,
        target: &ExportTarget,
        class: u32,
        prefix: &IpNet,
    ) -> Option<Arc<Route>> {
        let p = self.peers.get(&addr)?;
        if !p.config.policy.exports(prefix) {
            return None;
        }
        let best = self.loc_rib.best_candidate(prefix)?;
        // Split horizon: never back to the peer it came from.
        if best.source == Source::Peer(target.peer) {
            return None;
        }
        let client = match best.source {
            Source::Peer(a) => self
                .peers
                .get(&a)
                .is_some_and(|q| q.config.route_reflector_client),
            Source::Local => false,
        };
        let key: SourceKey = (best.source, best.ebgp, client, best.peer_id);
        if let Some(c) = self.export_cache.get(&(*prefix, class)) {
            if c.source == key && Arc::ptr_eq(&c.best, &best.route) {
                return c.out.clone();
            }
        }
        let from = policy::RouteSource {
            source: best.source,
            ebgp: best.ebgp,
            client,
            peer_id: best.peer_id,
        };
        let out = policy::export_from(&best.route, &from, matches!(prefix, IpNet::V6(_)), target);
        // Reuse the Arc when nothing changed, so equal attribute sets group cheaply.
        let out = out.map(|out| match p.adj_out.get(&self.prefix_ids, prefix) {
            Some(old) if **old == out => old.clone(),
            _ => Arc::new(out),
        });
        let best_route = best.route.clone();
        if self.export_cache.len() >= EXPORT_CACHE_LIMIT {
            self.export_cache.clear();
        }
        self.export_cache.insert(
            (*prefix, class),
            CachedExport {
                best: best_route,
                source: key,
                out: out.clone(),
            },
        );
        out
    }

    /// Exports to one peer while its send queue has room: pending prefixes first, then
    /// the families being resent, up to [`EXPORT_BATCH`] prefixes per step (fewer with a
    /// smaller send window); End-of-RIB once a first resend is complete.
    fn flush_peer(&mut self, addr: IpAddr) {
        let (window, step) = (self.window, export_batch_for(self.window));
        loop {
            let Some(p) = self.peers.get_mut(&addr) else {
                return;
            };
            let end = self.journal.end();
            if p.send_queue() >= window || p.export.is_idle(end) {
                return;
            }
            let Some(n) = p.negotiated.as_ref() else {
                return;
            };
            let mut batch: Vec<IpNet> = Vec::new();
            while batch.len() < step {
                match p.export.withdraw.pop() {
                    Some(prefix) => batch.push(prefix),
                    None => break,
                }
            }
            while batch.len() < step && p.export.seen < end {
                let at = p.export.seen;
                p.export.seen += 1;
                let Some(prefix) = self.journal.get(at) else {
                    continue;
                };
                let loc_rib = &self.loc_rib;
                if p.export.wants(
                    &prefix,
                    || loc_rib.best_candidate(&prefix).is_some(),
                    &n.families,
                ) {
                    batch.push(prefix);
                }
            }
            if batch.len() < step {
                if let Some((&family, &cursor)) = p.export.resend.iter().next() {
                    let want = step - batch.len();
                    let next = self.loc_rib.prefixes_after(family, cursor.as_ref(), want);
                    if next.len() < want {
                        // The Loc-RIB scan is done; what was advertised and is gone from
                        // the Loc-RIB must be withdrawn too.
                        p.export.resend.remove(&family);
                        let gone = p.adj_out.prefixes(&self.prefix_ids).filter(|q| {
                            Family::of(q) == family && self.loc_rib.best_candidate(q).is_none()
                        });
                        p.export.withdraw.extend(gone);
                    } else if let Some(last) = next.last() {
                        p.export.resend.insert(family, Some(*last));
                    }
                    batch.extend(next);
                }
            }
            if batch.is_empty() {
                if self.hold_eor {
                    return;
                }
                if p.export.resend.is_empty() && p.export.withdraw.is_empty() {
                    let eor = std::mem::take(&mut p.export.eor);
                    if !eor.is_empty() {
                        p.eor_sent = true;
                    }
                    if let Some(ctx) = p.negotiated.as_ref().map(|n| n.context) {
                        let messages = eor
                            .iter()
                            .map(|f| Bytes::from(wire::end_of_rib(*f, &ctx)))
                            .collect();
                        self.send_updates(addr, messages);
                    }
                }
                continue;
            }
            self.export_batch(addr, batch);
        }
    }

    /// Compares the export of each prefix with the Adj-RIB-Out and sends the difference:
    /// withdrawals per family, then announcements grouped per attribute set.
    fn export_batch(&mut self, addr: IpAddr, mut batch: Vec<IpNet>) {
        batch.sort_unstable();
        batch.dedup();
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let (Some(target), Some(n)) = (p.target, p.negotiated.as_ref()) else {
            return;
        };
        let ctx = n.context;
        let families = n.families.clone();
        let class = self.class_of(&target);
        let mut withdrawn: Vec<IpNet> = Vec::new();
        let mut groups: HashMap<Arc<Route>, Vec<IpNet>> = HashMap::new();
        for prefix in batch {
            if !families.contains(&Family::of(&prefix)) {
                continue;
            }
            let new = self.export_for(addr, &target, class, &prefix);
            let Some(p) = self.peers.get(&addr) else {
                return;
            };
            let old = p.adj_out.get(&self.prefix_ids, &prefix);
            match (old, new) {
                (Some(o), Some(n)) if Arc::ptr_eq(o, &n) || **o == *n => {}
                (_, Some(n)) => groups.entry(n).or_default().push(prefix),
                (Some(_), None) => withdrawn.push(prefix),
                (None, None) => {}
            }
        }
        // Groups in prefix order: the same step of another peer of the class then finds
        // the same groups in the encode cache.
        let mut groups: Vec<(Arc<Route>, Vec<IpNet>)> = groups.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.1.first().cmp(&b.1.first()));
        for (route, prefixes) in &groups {
            for prefix in prefixes {
                self.adj_out_insert(addr, class, *prefix, route.clone());
            }
        }
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let mut messages: Vec<Bytes> = Vec::new();
        for prefix in &withdrawn {
            p.adj_out.remove(&mut self.prefix_ids, prefix);
        }
        for fam in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let w: Vec<IpNet> = withdrawn
                .iter()
                .filter(|q| Family::of(q) == fam)
                .copied()
                .collect();
            if !w.is_empty() {
                messages.extend(
                    wire::pack_updates(&w, None, &ctx)
                        .into_iter()
                        .map(Bytes::from),
                );
            }
        }
        let cache = &mut self.encode_cache;
        for (route, prefixes) in groups {
            for fam in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
                let ps: Vec<IpNet> = prefixes
                    .iter()
                    .filter(|q| Family::of(q) == fam)
                    .copied()
                    .collect();
                if ps.is_empty() {
                    continue;
                }
                let key = (Arc::as_ptr(&route) as usize, ctx.four_octet_as, ps);
                if let Some((_, m)) = cache.messages.get(&key) {
                    messages.extend(m.iter().cloned());
                    continue;
                }
                let reach = Reach {
                    next_hop: route.next_hop,
                    prefixes: key.2.clone(),
                };
                let m: Vec<Bytes> = wire::pack_updates(&[], Some((&route.attrs, &reach)), &ctx)
                    .into_iter()
                    .map(Bytes::from)
                    .collect();
                let size = m.iter().map(Bytes::len).sum::<usize>()
                    + ENCODE_ENTRY_OVERHEAD
                    + key.2.len() * std::mem::size_of::<IpNet>();
                if cache.bytes + size > ENCODE_CACHE_BYTES {
                    cache.messages = HashMap::new();
                    cache.bytes = 0;
                }
                cache.bytes += size;
                messages.extend(m.iter().cloned());
                cache.messages.insert(key, (route.clone(), m));
            }
        }
        self.send_updates(addr, messages);
    }

    /// Records `route` as advertised to `addr` for `prefix`. When that replaces the
    /// class's shared route for the prefix, the other peers of the class that hold the old
    /// one keep it as their own (see [`crate::adj_rib_out`]).
    fn adj_out_insert(&mut self, addr: IpAddr, class: u32, prefix: IpNet, route: Arc<Route>) {
        if self.prefix_ids.replaces_reference(class, &prefix, &route) {
            for q in self.peers.values_mut() {
                q.adj_out.keep_own(&self.prefix_ids, class, &prefix);
            }
        }
        if let Some(p) = self.peers.get_mut(&addr) {
            p.adj_out.insert(&mut self.prefix_ids, class, prefix, route);
        }
    }

    fn send_updates(&mut self, addr: IpAddr, messages: Vec<Bytes>) {
        if messages.is_empty() {
            return;
        }
        // Whatever the session has to say goes first.
        self.drain_session(addr);
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        // Straight to the driver, not through the session's output queue: a burst of
        // UPDATEs left each session's queue with the capacity of its largest burst (about
        // 50 KiB per client of a reflector with 1,000 clients, half its memory).
        let Some(conn) = p.session.established_conn() else {
            return;
        };
        p.stats.updates_sent += messages.len() as u64;
        let queued = p.queued.entry(conn).or_default();
        for m in messages {
            *queued += m.len();
            self.actions.push_back(Action::Send(addr, conn, m));
        }
    }
}

impl Peer {
    /// Bytes waiting to be written on the Established connection.
    fn send_queue(&self) -> usize {
        self.conn
            .and_then(|c| self.queued.get(&c))
            .copied()
            .unwrap_or(0)
    }
}

/// Whether encoded message bytes are a KEEPALIVE.
fn is_keepalive(bytes: &[u8]) -> bool {
    bytes.len() == crate::message::HEADER_LEN && bytes.get(18) == Some(&wire::msg_type::KEEPALIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    #[test]
    fn a_changed_prefix_ahead_of_the_resend_cursor_is_left_to_the_resend() {
        let families = [Family::Ipv4Unicast, Family::Ipv6Unicast];
        let mut e = Export::default();
        e.resend
            .insert(Family::Ipv4Unicast, Some(net("10.0.5.0/24")));
        // Ahead of the cursor and still in the Loc-RIB: the resend will get to it.
        assert!(!e.wants(&net("10.0.9.0/24"), || true, &families));
        // Ahead of the cursor but gone from the Loc-RIB: the scan would not see it.
        assert!(e.wants(&net("10.0.8.0/24"), || false, &families));
        // Behind the cursor: the resend has passed it.
        assert!(e.wants(&net("10.0.1.0/24"), || true, &families));
        // Another family, not being resent.
        assert!(e.wants(&net("2001:db8::/48"), || true, &families));
        // A family the session did not negotiate: nothing to send.
        assert!(!e.wants(&net("2001:db8::/48"), || true, &[Family::Ipv4Unicast]));
    }

    #[test]
    fn a_peer_too_far_behind_the_journal_folds_into_full_resends() {
        let families = [Family::Ipv4Unicast, Family::Ipv6Unicast];
        let mut journal = ChangeJournal::default();
        let mut e = Export::default();
        e.clear(journal.end());
        let n = u32::try_from(PENDING_LIMIT).expect("fits");
        let all: Vec<IpNet> = (0..n)
            .map(|i| {
                IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
                        .expect("prefix"),
                )
            })
            .collect();
        journal.record(&all);
        e.fold_if_behind(&journal, &families);
        assert!(
            e.resend.is_empty(),
            "at the limit the journal is still read"
        );
        assert_eq!(e.seen, 0);
        journal.record(&[net("10.255.0.0/24")]);
        e.fold_if_behind(&journal, &families);
        assert_eq!(e.seen, journal.end(), "the journal is read from its end");
        assert_eq!(
            e.resend.keys().copied().collect::<Vec<_>>(),
            families.to_vec()
        );
        assert!(e.resend.values().all(Option::is_none), "from the start");
        assert!(!e.is_idle(journal.end()));
    }

    #[test]
    fn keepalives_are_recognised_by_their_header() {
        let ctx = crate::message::SessionContext {
            four_octet_as: true,
        };
        let ka = wire::encode(&crate::message::Message::Keepalive, &ctx).expect("encodes");
        assert!(is_keepalive(&ka));
        assert!(!is_keepalive(&wire::end_of_rib(Family::Ipv4Unicast, &ctx)));
        assert!(!is_keepalive(&[]));
    }
}
