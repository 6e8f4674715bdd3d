//! The admin API with real traffic through the namespace topology: changes made through it take
//! effect at once (caps, blocks) while counting stays exact, a restart comes back with what it
//! created, a desired-state sync converges, bad input changes nothing, a stuck client blocks no
//! one, the socket keeps unprivileged users out, and TCP needs TLS and the token. Expectations
//! come from outside the meter: the receiving namespace's own IP counters, iperf3's sender.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, UdpSink, delivered_rate, require_root, rx_octets,
    topology::{Topology, TopologyOptions, eip_v4},
    traffic::{Load, iperf_spawn, iperf_wait},
    unique_tag,
};
use serde_json::Value;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

fn topo(addresses: &[IpAddr]) -> Topology {
    require_root();
    Topology::new(&TopologyOptions {
        tenant_addresses: addresses.to_vec(),
        ipv6: false,
    })
    .expect("topology")
}

/// Runs `eip-meter` with `args` and the daemon's config; returns (success, stdout + stderr).
fn cli(daemon: &Daemon, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn changes_through_the_api_take_effect_under_traffic_and_counting_stays_exact() {
    let eip = eip_v4(30);
    let topo = topo(&[eip]);
    let daemon = Daemon::start(binary(), &topo.router, &topo.config(&[], ""), &[]).unwrap();

    // Created through the CLI, which finds the running daemon's socket.
    let (success, out) = cli(
        &daemon,
        &["eip", "set", &eip.to_string(), "--bandwidth", "100"],
    );
    assert!(success && out.contains("admin API"), "{out}");
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{eip}"), None);
    assert_eq!(shown["source"], "api");
    assert_eq!(
        shown["kernel"]["caps"]["inbound_bps"], 75_000_000,
        "{shown}"
    );

    let server =
        eip_meter_tests::traffic::IperfServer::start(&topo.tenant, SocketAddr::new(eip, 5201))
            .unwrap();
    let rx0 = rx_octets(&topo.tenant);
    let client = iperf_spawn(
        &topo.internet,
        Topology::internet_addr(eip, 0).ip(),
        server.addr,
        Load::Udp {
            rate_bps: 200_000_000,
            payload: 1400,
        },
        8,
    )
    .unwrap();
    thread::sleep(Duration::from_millis(700));
    let first = delivered_rate(&topo.tenant, Duration::from_secs(2));
    assert!(
        (first / 75e6 - 1.0).abs() <= 0.03,
        "at 75 Mbit/s: {first:.0}"
    );

    // A resize through the API: answered once the kernel holds it, the rate follows at once.
    let started = Instant::now();
    let v = daemon.api_ok(
        "PATCH",
        &format!("/v1/eips/{eip}"),
        Some(r#"{"bandwidth_mbps": 40}"#),
    );
    let answered = started.elapsed();
    assert_eq!(v["changed"], 1);
    let mut effective = None;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = delivered_rate(&topo.tenant, Duration::from_millis(100));
        if (r / 30e6 - 1.0).abs() <= 0.05 {
            effective = Some(started.elapsed());
            break;
        }
    }
    let steady = delivered_rate(&topo.tenant, Duration::from_secs(2));
    println!(
        "resize through the API: answered in {} ms, rate at the new cap within {effective:?}, then {:.1} Mbit/s",
        answered.as_millis(),
        steady / 1e6
    );
    assert!(effective.expect("never reached the new cap") <= Duration::from_secs(1));
    assert!(
        (steady / 30e6 - 1.0).abs() <= 0.03,
        "at 30 Mbit/s: {steady:.0}"
    );
    iperf_wait(client, 8).unwrap();
    thread::sleep(Duration::from_millis(300));
    let c = daemon.counters().unwrap();
    assert_eq!(
        c.eip(eip).inbound_bytes,
        rx_octets(&topo.tenant) - rx0,
        "counted bytes = delivered bytes across the API changes"
    );

    // Blocked through the API: nothing passes, every byte is accounted as blocked.
    daemon.api_ok(
        "PATCH",
        &format!("/v1/eips/{eip}"),
        Some(r#"{"state": "arrears"}"#),
    );
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let before = daemon.counters().unwrap();
    let (sent, received) = topo
        .inbound_udp(sink.addr, 300, Duration::from_millis(200))
        .unwrap();
    assert_eq!(received, 0, "a blocked EIP received traffic");
    let c = daemon.counters().unwrap();
    assert_eq!(c.enforcement(eip).state, "arrears");
    assert_eq!(
        c.enforcement(eip).inbound_drops.blocked_bytes
            - before.enforcement(eip).inbound_drops.blocked_bytes,
        sent
    );
    // Unblocked: everything passes and is counted.
    let (success, out) = cli(
        &daemon,
        &["eip", "set", &eip.to_string(), "--state", "active"],
    );
    assert!(success, "{out}");
    let counted = daemon.counters().unwrap().eip(eip).inbound_bytes;
    let (sent, received) = topo
        .inbound_udp(sink.addr, 300, Duration::from_millis(200))
        .unwrap();
    assert_eq!(received, sent);
    assert_eq!(
        daemon.counters().unwrap().eip(eip).inbound_bytes - counted,
        sent
    );

    // The audit trail has each change, from whom.
    let (success, out) = cli(&daemon, &["history", "--eip", &eip.to_string(), "--json"]);
    assert!(success, "{out}");
    let rows: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows.iter().all(|r| r["source"] == "api" && r["uid"] == 0));
    assert_eq!(rows[0]["before"], Value::Null);
    assert_eq!(rows[1]["after"]["bandwidth_mbps"], 40);
    assert_eq!(rows[2]["after"]["state"], "arrears");
    assert!(
        !daemon.log().contains("\"level\":\"ERROR\""),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_restart_keeps_the_api_inventory_and_the_file_owns_what_it_lists() {
    let (file_eip, api_eip, grouped) = (eip_v4(40), eip_v4(41), eip_v4(42));
    let topo = topo(&[file_eip, api_eip, grouped]);
    let cfg = topo.config(&[file_eip], "");
    let mut daemon = Daemon::start(binary(), &topo.router, &cfg, &[file_eip]).unwrap();
    let batch = format!(
        r#"{{"changes": [
            {{"op": "put_group", "name": "g1", "bandwidth_mbps": 300}},
            {{"op": "put_eip", "address": "{api_eip}", "bandwidth_mbps": 10, "effective_at": "2026-01-01T00:00:00Z"}},
            {{"op": "put_eip", "address": "{grouped}", "group": "g1", "state": "frozen"}}
        ]}}"#
    );
    // An effective time older than the accepted window is refused with its item.
    let (status, v) = daemon.api("POST", "/v1/changes", Some(&batch)).unwrap();
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["items"][0]["code"], "invalid_time");
    let at = chrono_like_now() - 3600;
    let batch = batch.replace("\"2026-01-01T00:00:00Z\"", &at.to_string());
    let v = daemon.api_ok("POST", "/v1/changes", Some(&batch));
    assert_eq!(v["added"], 3, "{v}");
    // The API may not change what the file owns.
    let (status, v) = daemon
        .api(
            "PATCH",
            &format!("/v1/eips/{file_eip}"),
            Some(r#"{"bandwidth_mbps": 5}"#),
        )
        .unwrap();
    assert_eq!((status, v["error"].as_str()), (409, Some("owned_by_file")));

    let socket = daemon.api_socket().unwrap();
    assert!(socket.exists());
    assert!(daemon.stop().unwrap());
    assert!(!socket.exists(), "a clean stop removes the API socket");
    daemon.spawn(&topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    daemon
        .wait_for_eips(&[file_eip, api_eip, grouped], Duration::from_secs(5))
        .unwrap();
    let c = daemon.counters().unwrap();
    assert_eq!(c.enforcement(grouped).state, "frozen");
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{api_eip}"), None);
    assert_eq!(
        (
            shown["source"].as_str(),
            shown["kernel"]["caps"]["inbound_bps"].as_u64()
        ),
        (Some("api"), Some(7_500_000))
    );
    let groups = daemon.api_ok("GET", "/v1/groups", None);
    assert_eq!(groups["groups"][0]["members"], 1, "{groups}");
    // The store's history has the control plane's time, not the arrival time.
    let db = daemon.state_dir.join("samples.db");
    let effective = sqlite(
        &db,
        &format!(
            "SELECT effective_from FROM inventory_history WHERE subject = '{api_eip}' ORDER BY id LIMIT 1"
        ),
    );
    assert_eq!(effective.trim(), at.to_string());

    let (success, out) = eip_meter_tests::validate_in(
        &topo.router,
        binary(),
        &std::fs::read_to_string(&daemon.config_path).unwrap(),
    )
    .unwrap();
    assert!(success, "{out}");
    assert!(
        out.contains("1 EIPs and 0 groups from the file; 2 EIPs and 1 groups from the admin API"),
        "{out}"
    );
    // The file takes over an EIP it lists.
    let mut with_api_eip = topo.config(&[file_eip, api_eip], "");
    with_api_eip.push('\n');
    daemon.reload_applied(&with_api_eip).unwrap();
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{api_eip}"), None);
    assert_eq!(shown["source"], "file");
    assert_eq!(
        shown["kernel"]["caps"],
        Value::Null,
        "the file's entry has no cap"
    );
    // The trail: created by the API, taken over by the file.
    let (success, out) = cli(&daemon, &["history", "--eip", &api_eip.to_string()]);
    assert!(success && out.lines().count() == 3, "{out}");
    assert!(out.lines().last().unwrap().contains("\tfile\t"), "{out}");
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sqlite(db: &Path, sql: &str) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let v: i64 = conn.query_row(sql, [], |r| r.get(0)).unwrap();
    v.to_string()
}

#[test]
fn a_sync_converges_bad_input_changes_nothing_and_a_stuck_client_blocks_no_one() {
    let probe = eip_v4(50);
    let topo = topo(&[probe]);
    let cfg = topo.config(&[], "capacity = 1100");
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[]).unwrap();
    let dir = std::env::temp_dir().join(unique_tag("sync"));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = |i: u32| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
    let line = |i: u32, bw: u32| format!(r#"{{"address":"{}","bandwidth_mbps":{bw}}}"#, addr(i));
    let mut first: Vec<String> = (1..=1000).map(|i| line(i, 100)).collect();
    first.push(format!(r#"{{"address":"{probe}","bandwidth_mbps":100}}"#));
    first.insert(0, r#"{"name":"pool","bandwidth_mbps":1000}"#.to_owned());
    let path = dir.join("first.ndjson");
    std::fs::write(&path, first.join("\n")).unwrap();
    let (success, out) = cli(&daemon, &["eip", "sync", path.to_str().unwrap()]);
    assert!(success && out.contains("added 1002"), "{out}");
    assert_eq!(daemon.counters().unwrap().eips.len(), 1001);

    // 10 resized, 5 gone, 5 new, the rest as they were: only the difference is applied.
    let mut second: Vec<String> = (6..=1000)
        .map(|i| line(i, if i <= 15 { 200 } else { 100 }))
        .chain((2001..=2005).map(|i| line(i, 100)))
        .collect();
    second.push(format!(r#"{{"address":"{probe}","bandwidth_mbps":100}}"#));
    second.push(r#"{"name":"pool","bandwidth_mbps":1000}"#.to_owned());
    let path = dir.join("second.ndjson");
    std::fs::write(&path, second.join("\n")).unwrap();
    let (success, out) = cli(&daemon, &["eip", "sync", path.to_str().unwrap()]);
    assert!(
        success && out.contains("added 5, changed 10, removed 5, unchanged 987"),
        "{out}"
    );
    let shown = daemon.api_ok("GET", &format!("/v1/eips/{}", addr(10)), None);
    assert_eq!(shown["kernel"]["caps"]["inbound_bps"], 150_000_000);
    let gone = daemon
        .api("GET", &format!("/v1/eips/{}", addr(3)), None)
        .unwrap();
    assert_eq!(gone.0, 404);
    assert_eq!(daemon.counters().unwrap().eips.len(), 1001);

    // A batch with bad items: each is named, nothing of the batch is applied.
    let bad = format!(
        r#"{{"changes": [
            {{"op": "put_eip", "address": "10.9.9.9"}},
            {{"op": "patch_eip", "address": "10.8.8.8", "state": "frozen"}},
            {{"op": "put_eip", "address": "10.9.9.10", "group": "nope"}},
            {{"op": "put_eip", "address": "::ffff:10.9.9.11"}},
            {{"op": "put_eip", "address": "{probe}", "bandwidth_mbps": 0}},
            {{"op": "remove_group", "name": "pool"}}
        ]}}"#
    );
    let (status, v) = daemon.api("POST", "/v1/changes", Some(&bad)).unwrap();
    assert_eq!(status, 422, "{v}");
    let codes: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "unknown_eip",
            "unknown_group",
            "address_family",
            "invalid_bandwidth"
        ],
        "{v}"
    );
    assert_eq!(daemon.api("GET", "/v1/eips/10.9.9.9", None).unwrap().0, 404);
    // Capacity: 1001 held, room for 99 more.
    let many: Vec<String> = (3000..3100)
        .map(|i| format!(r#"{{"op":"put_eip","address":"{}"}}"#, addr(i)))
        .collect();
    let (status, v) = daemon
        .api(
            "POST",
            "/v1/changes",
            Some(&format!(r#"{{"changes":[{}]}}"#, many.join(","))),
        )
        .unwrap();
    assert_eq!(
        (status, v["items"][0]["code"].as_str()),
        (422, Some("capacity"))
    );
    let (status, v) = daemon
        .api("POST", "/v1/changes", Some(r#"{"changes": [ {"op": "#))
        .unwrap();
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("malformed")),
        "{v}"
    );
    assert_eq!(daemon.counters().unwrap().eips.len(), 1001);

    // A client that sends half a request and stops holds only its own connection.
    let mut stuck = UnixStream::connect(daemon.api_socket().unwrap()).unwrap();
    stuck
        .write_all(b"PUT /v1/inventory HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"address\":")
        .unwrap();
    let started = Instant::now();
    let (success, out) = cli(
        &daemon,
        &["eip", "set", &probe.to_string(), "--bandwidth", "50"],
    );
    assert!(success, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a stuck client delayed another: {:?}",
        started.elapsed()
    );
    drop(stuck);
    // The final sync converges to exactly the set given.
    let (success, out) = cli(&daemon, &["eip", "sync", "/dev/null"]);
    assert!(success && out.contains("removed 1002"), "{out}");
    assert_eq!(daemon.counters().unwrap().eips.len(), 0);
    let status = daemon.api_ok("GET", "/v1/status", None);
    assert_eq!(
        (status["eips"].as_u64(), status["groups"].as_u64()),
        (Some(0), Some(0))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_socket_keeps_unprivileged_users_out_and_tcp_needs_tls_and_the_token() {
    let topo = topo(&[eip_v4(60)]);
    let dir = std::env::temp_dir().join(unique_tag("apitls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = eip_meter_tests::tls::make_certificates(&dir).unwrap();
    let token = "s3cret-token-of-the-control-plane";
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let socket = dir.join("admin.sock");
    let cfg = format!(
        "{}\n[api]\nsocket = \"{}\"\ngroup = \"adm\"\ntcp_listen = \"127.0.0.1:10318\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntoken_file = \"{}\"\n",
        topo.config(&[], ""),
        socket.display(),
        dir.join("server.pem").display(),
        dir.join("server.key").display(),
        dir.join("token").display()
    );
    let daemon = Daemon::start(binary(), &topo.router, &cfg, &[]).unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    let adm = nix::unistd::Group::from_name("adm").unwrap().unwrap().gid;
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, adm.as_raw()));

    // `nobody` without the group is refused by the kernel; with it, served.
    let as_nobody = |groups: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={groups}"));
        }
        let out = cmd
            .arg(binary())
            .args(["eip", "set", "203.0.113.61", "--bandwidth", "5", "--config"])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // Without access to the socket the command cannot reach the API, so it falls back to the
    // file, which nobody cannot write either.
    let (success, out) = as_nobody("");
    assert!(!success, "{out}");
    assert!(daemon.api("GET", "/v1/eips/203.0.113.61", None).unwrap().0 == 404);
    let (success, out) = as_nobody(&adm.as_raw().to_string());
    assert!(success && out.contains("admin API"), "{out}");
    let (_, v) = daemon.api("GET", "/v1/eips/203.0.113.61", None).unwrap();
    let (success, out) = cli(&daemon, &["history", "--eip", "203.0.113.61", "--json"]);
    assert!(success && out.contains("\"uid\":65534"), "{out}\n{v}");

    // TCP: TLS with the token only.
    let curl = |extra: &[&str]| {
        let out = topo
            .router
            .command("curl")
            .unwrap()
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = "https://localhost:10318/v1/status";
    let resolve = "localhost:10318:127.0.0.1";
    let cacert = ca.to_str().unwrap();
    assert_eq!(
        curl(&["--resolve", resolve, "--cacert", cacert, url]),
        "401"
    );
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(
        curl(&["--resolve", resolve, "--cacert", cacert, "-H", &auth, url]),
        "200"
    );
    let wrong = "Authorization: Bearer s3cret-token-of-the-control-planX";
    assert_eq!(
        curl(&["--resolve", resolve, "--cacert", cacert, "-H", wrong, url]),
        "401"
    );
    assert_eq!(
        curl(&["-H", &auth, "http://127.0.0.1:10318/v1/status"]),
        "000",
        "plain HTTP is not served"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
