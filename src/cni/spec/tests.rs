use super::*;
use std::collections::HashMap;
use std::path::Path;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| m.get(k).map(OsString::from)
}

fn stdin(v: Value) -> Stdin {
    decode_stdin(v.to_string().as_bytes()).expect("object")
}

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "ferrovia", "type": "ferrovia-cni"})
}

const OLD: [&str; 3] = ["0.3.0", "0.3.1", "0.4.0"];
const ALL: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// ---------------------------------------------------------------------------------
// Versions.

#[test]
fn every_supported_version_negotiates_for_add_and_del() {
    for v in ALL {
        for c in [Command::Add, Command::Del] {
            assert_eq!(
                negotiate(&stdin(conf(v)), c).map(|x| x.as_str()),
                Ok(v),
                "{v} {c:?}"
            );
        }
    }
}

#[test]
fn unsupported_versions_are_error_1_naming_what_we_speak() {
    for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "banana"] {
        let e = negotiate(&stdin(conf(v)), Command::Add).unwrap_err();
        assert_eq!(e.code, 1, "{v}");
        assert_eq!(e.msg, "incompatible CNI versions");
        assert!(e.details.contains(v), "{e:?}");
        assert!(
            e.details.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"),
            "{e:?}"
        );
    }
    // No cniVersion at all is 0.1.0, as in the reference libraries.
    let e = negotiate(&stdin(json!({"name": "n", "type": "t"})), Command::Add).unwrap_err();
    assert_eq!(e.code, 1);
    assert!(e.details.contains("0.1.0"), "{e:?}");
    // Not a string: cannot decode it.
    let e = negotiate(&stdin(json!({"cniVersion": 1.1})), Command::Add).unwrap_err();
    assert_eq!(e.code, 6);
}

#[test]
fn check_needs_0_4_0_and_gc_status_need_1_1_0() {
    for v in ["0.3.0", "0.3.1"] {
        let e = negotiate(&stdin(conf(v)), Command::Check).unwrap_err();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (1, "config version does not allow CHECK")
        );
    }
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(negotiate(&stdin(conf(v)), Command::Check).is_ok(), "{v}");
    }
    for c in [Command::Gc, Command::Status] {
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
            let e = negotiate(&stdin(conf(v)), c).unwrap_err();
            assert_eq!(e.code, 1, "{v} {c:?}");
            assert_eq!(
                e.msg,
                format!("config version does not allow {}", c.as_str())
            );
            assert!(e.details.contains("1.1.0"), "{e:?}");
        }
        assert!(negotiate(&stdin(conf("1.1.0")), c).is_ok());
    }
}

#[test]
fn version_reply_echoes_a_spoken_version_else_the_newest() {
    let want_list = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for v in ALL {
        let r = version_reply(Some(v));
        assert_eq!(r, json!({"cniVersion": v, "supportedVersions": want_list}));
    }
    for v in [None, Some("0.2.0"), Some("9.9.9")] {
        assert_eq!(version_reply(v)["cniVersion"], "1.1.0", "{v:?}");
    }
}

#[test]
fn version_shapes() {
    assert!(looks_like_version("0.2.0") && looks_like_version("10.0.1"));
    assert!(!looks_like_version("1.0") && !looks_like_version("a.b.c"));
    assert!(!looks_like_version("1.0.0-rc1") && !looks_like_version(""));
}

// ---------------------------------------------------------------------------------
// Errors.

#[test]
fn error_json_has_the_four_fields_and_omits_empty_details() {
    let e = CniError::new(11, "the ferrovia agent is not running", "start it");
    assert_eq!(
        e.to_json("0.4.0"),
        json!({"cniVersion": "0.4.0", "code": 11, "msg": "the ferrovia agent is not running", "details": "start it"})
    );
    let e = CniError::new(7, "bad", "");
    assert_eq!(
        e.to_json("1.1.0"),
        json!({"cniVersion": "1.1.0", "code": 7, "msg": "bad"})
    );
    assert_eq!(e.to_string(), "CNI error 7: bad");
}

// ---------------------------------------------------------------------------------
// Environment.

#[test]
fn command_is_required_and_must_be_known() {
    let e = command_from(&env_of(&[])).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("CNI_COMMAND"));
    let e = command_from(&env_of(&[("CNI_COMMAND", "FROB")])).unwrap_err();
    assert_eq!(e.code, 4);
    assert!(e.msg.contains("CNI_COMMAND") && e.msg.contains("FROB"));
    for c in ["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"] {
        assert_eq!(
            command_from(&env_of(&[("CNI_COMMAND", c)]))
                .unwrap()
                .as_str(),
            c
        );
    }
}

#[test]
fn missing_variables_are_all_named() {
    let e = env_from(Command::Add, &env_of(&[("CNI_COMMAND", "ADD")])).unwrap_err();
    assert_eq!(e.code, 4);
    for v in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        assert!(e.msg.contains(v), "{v} in {e:?}");
        assert!(e.details.contains(&format!("{v} is not set")), "{e:?}");
    }
    // DEL needs no namespace.
    let e = env_from(Command::Del, &env_of(&[])).unwrap_err();
    assert!(!e.msg.contains("CNI_NETNS"), "{e:?}");
    assert!(e.msg.contains("CNI_CONTAINERID") && e.msg.contains("CNI_IFNAME"));
    // GC, STATUS and VERSION need nothing but the command.
    for c in [Command::Gc, Command::Status, Command::Version] {
        assert!(env_from(c, &env_of(&[])).is_ok(), "{c:?}");
    }
}

#[test]
fn invalid_variables_are_named_with_the_reason() {
    let base = [
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
    ];
    let with = |k: &'static str, v: &'static str| {
        let mut e: Vec<(&str, &str)> = base.iter().copied().filter(|p| p.0 != k).collect();
        e.push((k, v));
        env_from(Command::Add, &env_of(&e))
    };
    let ok = with(
        "CNI_ARGS",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;IgnoreUnknown=1",
    )
    .unwrap();
    assert_eq!(ok.pod_namespace(), Some("ns"));
    assert_eq!(ok.pod_name(), Some("web-0"));
    assert_eq!(ok.netns.as_deref(), Some(Path::new("/run/netns/x")));
    for (k, v, why) in [
        ("CNI_IFNAME", "abcdefghijklmnop", "16 bytes long"),
        ("CNI_IFNAME", "..", "'.' or '..'"),
        ("CNI_IFNAME", "a b", "whitespace"),
        ("CNI_IFNAME", "a/b", "'/'"),
        ("CNI_IFNAME", "", "is empty"),
        ("CNI_CONTAINERID", "-abc", "start with a letter"),
        ("CNI_CONTAINERID", "a:b", "only letters"),
        ("CNI_NETNS", "relative/ns", "absolute"),
        ("CNI_NETNS", "", "is empty"),
        ("CNI_ARGS", "K8S_POD_NAME", "KEY=VALUE"),
    ] {
        let e = with(k, v).unwrap_err();
        assert_eq!(e.code, 4, "{k}={v}");
        assert!(e.msg.contains(k), "{k}={v}: {e:?}");
        assert!(e.details.contains(why), "{k}={v}: {e:?}");
    }
    // 15 bytes is the limit.
    assert!(with("CNI_IFNAME", "abcdefghijklmno").is_ok());
}

#[test]
fn del_tolerates_an_absent_or_empty_netns() {
    let e = env_from(
        Command::Del,
        &env_of(&[
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ]),
    )
    .unwrap();
    assert_eq!(e.netns, None);
    let e = env_from(
        Command::Del,
        &env_of(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]),
    )
    .unwrap();
    assert_eq!(e.netns, None);
}

// ---------------------------------------------------------------------------------
// Configuration.

#[test]
fn config_defaults_and_values() {
    let c = parse_netconf(&stdin(conf("1.1.0")), Command::Add, Version::V1_1_0).unwrap();
    assert_eq!(c.agent_socket, Path::new("/run/ferrovia/ferrovia.sock"));
    assert_eq!(c.mtu, 1500);
    assert_eq!(c.name, "ferrovia");
    let mut v = conf("1.0.0");
    v["agentSocket"] = json!("/tmp/x.sock");
    v["mtu"] = json!(9000);
    v["dns"] = json!({"nameservers": ["10.96.0.10"]});
    v["runtimeConfig"] = json!({"foo": 1});
    v["someRuntimeKey"] = json!(true);
    let c = parse_netconf(&stdin(v), Command::Add, Version::V1_0_0).unwrap();
    assert_eq!(c.agent_socket, Path::new("/tmp/x.sock"));
    assert_eq!(c.mtu, 9000);
    assert_eq!(c.dns, Some(json!({"nameservers": ["10.96.0.10"]})));
}

#[test]
fn invalid_config_is_error_7_and_ipam_error_2() {
    let cases: Vec<(Value, u32, &str)> = vec![
        (json!({"mtu": 1279}), 7, "mtu"),
        (json!({"mtu": 65536}), 7, "mtu"),
        (json!({"mtu": "1500"}), 7, "mtu"),
        (json!({"mtu": 1500.5}), 7, "mtu"),
        (json!({"agentSocket": "run/x.sock"}), 7, "agentSocket"),
        (json!({"agentSocket": 5}), 7, "agentSocket"),
        (json!({"name": null}), 7, "name"),
        (json!({"name": "-bad"}), 7, "name"),
        (json!({"type": null}), 7, "type"),
        (json!({"dns": "8.8.8.8"}), 7, "dns"),
        (json!({"ipam": {"type": "host-local"}}), 2, "ipam"),
        (json!({"prevResult": {"ips": "nope"}}), 6, "prevResult"),
    ];
    for (patch, code, word) in cases {
        let mut v = conf("1.1.0");
        for (k, x) in patch.as_object().unwrap() {
            if x.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = x.clone();
            }
        }
        let e = parse_netconf(&stdin(v.clone()), Command::Add, Version::V1_1_0).unwrap_err();
        assert_eq!(e.code, code, "{v}: {e:?}");
        assert!(
            e.msg.contains(word) || e.details.contains(word),
            "{word}: {e:?}"
        );
    }
}

#[test]
fn check_requires_prev_result() {
    let e = parse_netconf(&stdin(conf("1.0.0")), Command::Check, Version::V1_0_0).unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("prevResult"));
}

#[test]
fn gc_takes_the_union_of_both_attachment_keys() {
    let mut v = conf("1.1.0");
    v["cni.dev/valid-attachments"] = json!([
        {"containerID": "a", "ifname": "eth0"},
        {"containerID": "b", "ifname": "eth0"}
    ]);
    v["cni.dev/attachments"] = json!([
        {"containerID": "b", "ifname": "eth0"},
        {"containerID": "c", "ifname": "net1"}
    ]);
    let c = parse_netconf(&stdin(v), Command::Gc, Version::V1_1_0).unwrap();
    let got: Vec<(&str, &str)> = c
        .valid_attachments
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    assert_eq!(got, vec![("a", "eth0"), ("b", "eth0"), ("c", "net1")]);
    // Either key alone.
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let mut v = conf("1.1.0");
        v[key] = json!([{"containerID": "a", "ifname": "eth0"}]);
        let c = parse_netconf(&stdin(v), Command::Gc, Version::V1_1_0).unwrap();
        assert_eq!(c.valid_attachments.len(), 1, "{key}");
    }
    // An empty list is valid (everything is stale); no list at all is refused.
    let mut v = conf("1.1.0");
    v["cni.dev/valid-attachments"] = json!([]);
    let c = parse_netconf(&stdin(v), Command::Gc, Version::V1_1_0).unwrap();
    assert!(c.valid_attachments.is_empty());
    let e = parse_netconf(&stdin(conf("1.1.0")), Command::Gc, Version::V1_1_0).unwrap_err();
    assert_eq!(e.code, 7);
    let mut v = conf("1.1.0");
    v["cni.dev/attachments"] = json!([{"container": "a"}]);
    let e = parse_netconf(&stdin(v), Command::Gc, Version::V1_1_0).unwrap_err();
    assert_eq!(e.code, 6);
}

#[test]
fn stdin_must_be_one_json_object() {
    for bad in [&b""[..], b"{", b"[1,2]", b"\"x\"", b"{\"a\":1} trailing"] {
        let e = decode_stdin(bad).unwrap_err();
        assert_eq!(e.code, 6, "{:?}", String::from_utf8_lossy(bad));
    }
}

/// The example network configuration, as a runtime turns it into the plugin's
/// configuration: `cniVersion` (the highest of `cniVersions` it speaks) and `name` copied
/// into the plugin object.
#[test]
fn example_conflist_loads_as_the_plugin_reads_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferrovia.conflist");
    let text = std::fs::read_to_string(&path).expect("config/ferrovia.conflist");
    let list: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(list["name"], "ferrovia");
    let plugins = list["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1);
    let mut versions: Vec<Version> = list["cniVersions"]
        .as_array()
        .expect("cniVersions")
        .iter()
        .map(|v| Version::parse(v.as_str().unwrap()).expect("a version we speak"))
        .collect();
    versions.push(Version::parse(list["cniVersion"].as_str().unwrap()).unwrap());
    let chosen = versions.into_iter().max().unwrap();
    assert_eq!(chosen, Version::V1_1_0);
    let mut p = plugins[0].clone();
    assert_eq!(p["type"], crate::cni::plugin::PLUGIN_NAME);
    p["cniVersion"] = json!(chosen.as_str());
    p["name"] = list["name"].clone();
    let s = stdin(p);
    for c in [Command::Add, Command::Del, Command::Status] {
        let v = negotiate(&s, c).expect("version");
        let conf = parse_netconf(&s, c, v).expect("valid");
        assert_eq!(conf.agent_socket, Path::new(crate::config::DEFAULT_SOCKET));
        assert_eq!(conf.mtu, 1500);
    }
}

// ---------------------------------------------------------------------------------
// Results.

fn added() -> Added {
    Added {
        host_ifname: "fv1234567890abc".into(),
        host_mac: "ee:ee:ee:ee:ee:ee".into(),
        pod_ifname: "eth0".into(),
        pod_mac: "02:11:22:33:44:55".into(),
        sandbox: "/run/netns/pod".into(),
        mtu: 1500,
        ipv4: Some("10.244.0.7".parse().unwrap()),
        ipv6: Some("fd00:10:244::7".parse().unwrap()),
    }
}

#[test]
fn add_result_for_0_3_x_and_0_4_0_has_ip_versions() {
    for v in OLD {
        let r = add_result(&added(), None).to_json(Version::parse(v).unwrap());
        assert_eq!(
            r,
            json!({
                "cniVersion": v,
                "interfaces": [
                    {"name": "fv1234567890abc", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/pod"}
                ],
                "ips": [
                    {"version": "4", "address": "10.244.0.7/32", "gateway": "169.254.1.1", "interface": 1},
                    {"version": "6", "address": "fd00:10:244::7/128", "gateway": "fe80::ecee:eeff:feee:eeee", "interface": 1}
                ],
                "routes": [
                    {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                    {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}
                ],
                "dns": {}
            }),
            "{v}"
        );
    }
}

#[test]
fn add_result_for_1_0_0_has_no_ip_versions_and_1_1_0_adds_mtu() {
    let r = add_result(&added(), None).to_json(Version::V1_0_0);
    assert_eq!(
        r,
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "fv1234567890abc", "mac": "ee:ee:ee:ee:ee:ee"},
                {"name": "eth0", "mac": "02:11:22:33:44:55", "sandbox": "/run/netns/pod"}
            ],
            "ips": [
                {"address": "10.244.0.7/32", "gateway": "169.254.1.1", "interface": 1},
                {"address": "fd00:10:244::7/128", "gateway": "fe80::ecee:eeff:feee:eeee", "interface": 1}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}
            ],
            "dns": {}
        })
    );
    let r = add_result(&added(), None).to_json(Version::V1_1_0);
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["mtu"], 1500);
    assert_eq!(r["interfaces"][1]["mtu"], 1500);
    assert!(r["ips"][0].get("version").is_none());
}

#[test]
fn single_stack_results_and_dns_from_the_config() {
    let mut a = added();
    a.ipv6 = None;
    let dns = json!({"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]});
    let r = add_result(&a, Some(&dns)).to_json(Version::V1_0_0);
    assert_eq!(r["ips"].as_array().unwrap().len(), 1);
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_eq!(r["dns"], dns);
    let mut a = added();
    a.ipv4 = None;
    let r = add_result(&a, None).to_json(Version::V0_4_0);
    assert_eq!(
        r["ips"],
        json!([{"version": "6", "address": "fd00:10:244::7/128", "gateway": "fe80::ecee:eeff:feee:eeee", "interface": 1}])
    );
}

#[test]
fn results_round_trip_through_prev_result_in_every_version() {
    for v in ALL {
        let ver = Version::parse(v).unwrap();
        let json = add_result(&added(), None).to_json(ver);
        let back = CniResult::parse(&json, ver).unwrap();
        assert_eq!(back.to_json(ver), json, "{v}");
    }
    // A 0.4.0 result without ip versions is not a 0.4.0 result.
    let j = add_result(&added(), None).to_json(Version::V1_0_0);
    assert!(CniResult::parse(&j, Version::V0_4_0).is_err());
}

#[test]
fn unknown_result_fields_pass_through() {
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo0", "socketPath": "/x", "pciID": "0000:00:01.0"}],
        "ips": [{"address": "192.0.2.1/24"}],
        "routes": [{"dst": "192.0.2.0/24", "priority": 5, "table": 100, "scope": 253}],
        "dns": {"domain": "example"}
    });
    let r = CniResult::parse(&prev, Version::V1_1_0).unwrap();
    assert_eq!(r.to_json(Version::V1_1_0), prev);
}

#[test]
fn chaining_after_a_prev_result_shifts_our_interface_indexes() {
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "x0"}],
        "ips": [{"address": "192.0.2.1/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}
    });
    let prev = CniResult::parse(&prev, Version::V1_0_0).unwrap();
    let r = prev
        .chain(add_result(&added(), None))
        .to_json(Version::V1_0_0);
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(r["interfaces"][2]["name"], "eth0");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["ips"][1]["interface"], 2);
    assert_eq!(r["ips"][2]["interface"], 2);
    assert_eq!(r["dns"], json!({"nameservers": ["192.0.2.53"]}));
}

#[test]
fn check_expectations_come_from_the_pod_interface_in_prev_result() {
    let ver = Version::V1_0_0;
    let prev = CniResult::parse(&add_result(&added(), None).to_json(ver), ver).unwrap();
    let e = expected_from(&prev, "eth0", "/run/netns/pod").unwrap();
    assert_eq!(
        e.ips,
        vec![
            "10.244.0.7".parse::<IpAddr>().unwrap(),
            "fd00:10:244::7".parse().unwrap()
        ]
    );
    assert_eq!(e.host_interfaces, vec!["fv1234567890abc".to_string()]);
    let err = expected_from(&prev, "eth1", "/run/netns/pod").unwrap_err();
    assert_eq!(err.code, code::CHECK_FAILED);
    let err = expected_from(&prev, "eth0", "/run/netns/other").unwrap_err();
    assert_eq!(err.code, code::CHECK_FAILED);
    let mut bare = prev.clone();
    bare.ips.clear();
    assert_eq!(
        expected_from(&bare, "eth0", "/run/netns/pod")
            .unwrap_err()
            .code,
        code::CHECK_FAILED
    );
}

// ---------------------------------------------------------------------------------
// One invocation, validated once.

fn invoke(env: &[(&str, &str)], stdin: &str) -> Result<Invocation, Refusal> {
    parse_invocation(&env_of(env), stdin.as_bytes(), None)
}

#[test]
fn version_is_answered_whatever_else_is_wrong() {
    let r = invoke(&[("CNI_COMMAND", "VERSION")], "{nope").expect("version");
    let Invocation::Version(v) = r else {
        panic!("not a VERSION reply: {r:?}")
    };
    assert_eq!(v["cniVersion"], "1.1.0");
}

#[test]
fn errors_come_in_order_and_carry_the_configuration_version() {
    // The environment before stdin: a missing CNI_NETNS is reported even with bad stdin.
    let e = invoke(&[("CNI_COMMAND", "ADD")], "{nope").unwrap_err();
    assert_eq!((e.error.code, e.version.as_str()), (4, "1.1.0"));
    let e = invoke(
        &[("CNI_COMMAND", "ADD")],
        r#"{"cniVersion":"0.4.0","name":"n","type":"t"}"#,
    )
    .unwrap_err();
    assert_eq!((e.error.code, e.version.as_str()), (4, "0.4.0"));
    // Reading stdin failed: 5, after the environment.
    let io = std::io::Error::other("broken pipe");
    let e = parse_invocation(
        &env_of(&[("CNI_COMMAND", "STATUS")]),
        br#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#,
        Some(&io),
    )
    .unwrap_err();
    assert_eq!((e.error.code, e.version.as_str()), (5, "1.1.0"));
    // The namespace last: a path that is not a namespace is 4, a gone one 3.
    let add = |netns: &str| {
        invoke(
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", netns),
            ],
            r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
        )
    };
    let e = add("/nonexistent/netns").unwrap_err();
    assert_eq!((e.error.code, e.version.as_str()), (3, "1.0.0"));
    let e = add("/proc/self/ns/net").unwrap_err();
    assert_eq!(e.error.code, 4);
    assert!(e.error.msg.contains("node's own"), "{e:?}");
}

#[test]
fn del_and_gc_become_agent_requests_without_a_namespace() {
    let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"t","agentSocket":"/x/y.sock","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"-bad","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"c2","ifname":"a/b"}]}"#;
    let r = invoke(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ],
        conf,
    )
    .expect("DEL");
    let Invocation::Call(call) = r else {
        panic!("not a call: {r:?}")
    };
    assert_eq!(call.command(), Command::Del);
    assert_eq!(call.conf.agent_socket, Path::new("/x/y.sock"));
    assert_eq!(
        call.request,
        AgentRequest::Del(Detach {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: None
        })
    );
    // GC: attachments whose identifiers break the rules hold nothing of ours and are not
    // sent (the agent would refuse the whole request).
    let r = invoke(&[("CNI_COMMAND", "GC")], conf).expect("GC");
    let Invocation::Call(call) = r else {
        panic!("not a call: {r:?}")
    };
    assert_eq!(
        call.request,
        AgentRequest::Gc(Gc {
            valid: vec![AttachmentId {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        })
    );
}

#[test]
fn without_mtu_the_agent_is_asked_for_the_nodes_mtu() {
    let c = parse_netconf(&stdin(conf("1.1.0")), Command::Add, Version::V1_1_0).unwrap();
    assert!(!c.mtu_configured);
    assert_eq!(
        c.requested_mtu(),
        0,
        "0: the agent uses the node's interface MTU"
    );
    let mut v = conf("1.1.0");
    v["mtu"] = json!(1500);
    let c = parse_netconf(&stdin(v), Command::Add, Version::V1_1_0).unwrap();
    assert_eq!(
        c.requested_mtu(),
        1500,
        "an explicit mtu is passed as given"
    );
}
