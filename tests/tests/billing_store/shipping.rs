//! Shipping: an ECMP pair against `compute`, outages, `kill -9` mid-ship, conflicts, a
//! twin host name, wrong credentials.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::Duration,
};

use eip_meter_tests::{
    Daemon, UdpSink, mixed_sizes,
    postgres::Postgres,
    require_root, send_udp,
    topology::{DUAL_INTERNET_V4, DualTopology, eip_v4},
    validate_in,
};

use super::*;

#[test]
fn fleet_figures_of_an_ecmp_pair_equal_compute_over_both_exports() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    let roles = [("router_a", "secret-a"), ("router_b", "secret-b")];
    for (role, password) in roles {
        pg.add_login_role(role, password, "eip_meter_daemon")
            .unwrap();
    }
    pg.add_login_role("billing", "secret-billing", "eip_meter_billing")
        .unwrap();
    let eip = eip_v4(30);
    let topo = DualTopology::new(&[eip]).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 9000)).unwrap();
    let mut daemons: Vec<Daemon> = (0..2)
        .map(|n| {
            let (role, password) = roles[n];
            let rest = format!(
                "{SAMPLER}\n\n[[group]]\nname = \"shared-1\"\nbandwidth_mbps = 300\n\n[[eip]]\naddress = \"{eip}\"\ngroup = \"shared-1\"\n{}",
                pg.billing_store_section(role, password).unwrap()
            );
            Daemon::start(binary(), &topo.routers[n], &topo.config(n, &rest), &[eip]).unwrap()
        })
        .collect();

    // Two pings warm the neighbours (84 IP bytes each way each), then 24 UDP flows, each on
    // its own source port: ECMP spreads them over both routers.
    let ping = topo
        .internet
        .command("ping")
        .unwrap()
        .args(["-c", "2", "-i", "0.2", "-W", "2", "-I"])
        .arg(DUAL_INTERNET_V4.to_string())
        .arg(eip.to_string())
        .output()
        .unwrap();
    assert!(ping.status.success(), "no path to {eip}");
    let mut sent_in = 2 * 84;
    let sent_out = 2 * 84;
    for _ in 0..24 {
        sent_in += send_udp(
            &topo.internet,
            IpAddr::V4(DUAL_INTERNET_V4),
            sink.addr,
            mixed_sizes(40, false),
        )
        .unwrap();
        thread::sleep(Duration::from_millis(120));
    }
    let after = now() + 2;
    for (n, host) in ["router-a", "router-b"].iter().enumerate() {
        wait_shipped(&pg, &daemons[n], host, after, Duration::from_secs(30));
    }
    for d in &mut daemons {
        assert!(d.stop().unwrap());
    }

    // Bytes: what the two routers shipped is what was sent, and both carried a part.
    let mut shipped = (0, 0);
    let mut union = String::from("eip,interval_start,bytes_in,bytes_out,host,state\n");
    for (n, host) in ["router-a", "router-b"].iter().enumerate() {
        let local = assert_store_matches_local(&pg, &daemons[n], host);
        let rows = stored_rows(&pg, host);
        let part: (u64, u64) = rows
            .values()
            .fold((0, 0), |(a, b), (i, o, _)| (a + i, b + o));
        println!("{host}: {} sample rows, {part:?} bytes in/out", rows.len());
        assert!(part.0 > 0, "ECMP sent nothing through {host}");
        shipped = (shipped.0 + part.0, shipped.1 + part.1);
        for s in local {
            let at = chrono::DateTime::from_timestamp(s.start, 0)
                .unwrap()
                .to_rfc3339();
            union.push_str(&format!(
                "{},{at},{},{},{},{}\n",
                s.eip, s.bytes_in, s.bytes_out, s.host, s.state
            ));
        }
    }
    assert_eq!(shipped, (sent_in, sent_out), "shipped bytes vs sent bytes");
    // The audit trail came with the rounds: each router's start added the group and the EIP.
    for host in ["router-a", "router-b"] {
        let audit = pg
            .query(&format!(
                "SELECT kind || ',' || subject || ',' || source || ',' || coalesce(after->>'group', '-')
                 FROM inventory_audit WHERE host = '{host}' ORDER BY local_id"
            ))
            .unwrap();
        assert_eq!(
            audit.trim(),
            format!("group,shared-1,file,-\neip,{eip},file,shared-1"),
            "{host}"
        );
    }

    // Figures: `bill` from the billing store vs `compute` over the union of the exports.
    let history: String = pg
        .query(
            "SELECT subject || ',' || to_char(to_timestamp(effective_from) AT TIME ZONE 'UTC',
                    'YYYY-MM-DD\"T\"HH24:MI:SS\"+00:00\"') || ',' || bandwidth_mbps
             FROM inventory_history WHERE bandwidth_mbps IS NOT NULL",
        )
        .unwrap();
    let reference = eip_meter_tests::compute_with(
        binary(),
        &union,
        "UTC",
        1,
        &[
            ("--groups", &format!("eip,group\n{eip},shared-1\n")),
            (
                "--bandwidth-history",
                &format!("eip,effective_from,bandwidth_mbps\n{history}\n"),
            ),
        ],
    )
    .unwrap();
    let days: Vec<String> = reference["eips"][eip.to_string()]["days"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert!(!days.is_empty());
    let bill = |day: &str| {
        let out = Command::new(binary())
            .args(["bill", "--store", &pg.url("billing"), "--day", day])
            .env("EIP_METER_STORE_PASSWORD", "secret-billing")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bill: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for day in &days {
        let said = bill(day);
        println!("{said}");
        assert!(
            said.contains("from 2 host(s) (router-a, router-b)"),
            "{said}"
        );
        for (kind, subject, expected) in [
            ("eip", eip.to_string(), &reference["eips"][eip.to_string()]),
            (
                "group",
                "shared-1".to_owned(),
                &reference["groups"]["shared-1"],
            ),
        ] {
            let stored: serde_json::Value = serde_json::from_str(
                &pg.query(&format!(
                    "SELECT figures FROM figures WHERE kind = '{kind}' AND subject = '{subject}'
                     AND period = '{day}' ORDER BY revision DESC LIMIT 1"
                ))
                .unwrap(),
            )
            .unwrap();
            assert_eq!(&stored, &expected["days"][day], "{kind} {subject} on {day}");
            let hosts = pg
                .query(&format!(
                    "SELECT hosts FROM figures WHERE kind = '{kind}' AND subject = '{subject}'
                     AND period = '{day}'"
                ))
                .unwrap();
            assert_eq!(hosts, "{router-a,router-b}");
        }
        // Again: nothing changes, no new revision.
        let before: i64 = pg.value("SELECT count(*) FROM figures").unwrap();
        let again = bill(day);
        assert!(again.contains(" 0 new revision(s)"), "{again}");
        assert_eq!(
            pg.value::<i64>("SELECT count(*) FROM figures").unwrap(),
            before
        );
    }
}

#[test]
fn an_outage_of_the_billing_store_loses_no_round_and_repeats_none() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    pg.add_login_role("router_a", "secret-a", "eip_meter_daemon")
        .unwrap();
    let r = OneRouter::new(eip_v4(31));
    let store = pg.billing_store_section("router_a", "secret-a").unwrap();
    let mut daemon = Daemon::start(binary(), &r.topo.router, &r.config(&store), &[r.eip]).unwrap();
    r.burst(100);
    wait_shipped(&pg, &daemon, "router-a", now() + 1, Duration::from_secs(20));

    // Down for several rounds, with traffic: metering and local commits go on, the backlog
    // shows in the metrics, the report and the log.
    pg.stop_server().unwrap();
    let down_at = now();
    for _ in 0..5 {
        r.burst(60);
        thread::sleep(Duration::from_millis(900));
    }
    thread::sleep(Duration::from_secs(1));
    let ns = &r.topo.router;
    assert_eq!(metric(&daemon, ns, "eip_meter_billing_store_up"), 0.0);
    let backlog = metric(&daemon, ns, "eip_meter_billing_store_unshipped_rounds");
    assert!(backlog >= 4.0, "unshipped rounds {backlog}");
    let oldest = metric(
        &daemon,
        ns,
        "eip_meter_billing_store_oldest_unshipped_round_timestamp_seconds",
    );
    assert!(
        (down_at as f64 - 3.0..=now() as f64).contains(&oldest),
        "oldest unshipped round {oldest}, store down at {down_at}"
    );
    let report = daemon.subcommand(&["report"]).unwrap();
    println!(
        "{}",
        report
            .lines()
            .find(|l| l.starts_with("billing store"))
            .unwrap_or("")
    );
    assert!(
        report.contains("round(s) not shipped, the oldest ending"),
        "{report}"
    );
    assert!(report.contains("failing"), "{report}");
    let stopped = daemon.log_events(
        "billing store: shipping stopped; rounds are kept locally and shipped when it works again",
    );
    // Loud once per distinct failure (the cut connection, then the refused connects), not
    // once per retry.
    let errors = metric(&daemon, ns, "eip_meter_billing_store_ship_errors_total");
    assert!(
        (1..=2).contains(&stopped.len()) && errors > stopped.len() as f64,
        "{} error lines for {errors} failures:\n{}",
        stopped.len(),
        daemon.log()
    );

    // Back: the backlog ships, oldest first, and the daemon says so.
    pg.start_server().unwrap();
    r.burst(100);
    wait_shipped(&pg, &daemon, "router-a", now() + 1, Duration::from_secs(60));
    // Logged right after the local acknowledgement, a moment after the store's commit.
    assert!(
        poll(Duration::from_secs(5), Duration::from_millis(50), || {
            !daemon
                .log_events("billing store shipping resumed")
                .is_empty()
        }),
        "{}",
        daemon.log()
    );
    assert_eq!(metric(&daemon, ns, "eip_meter_billing_store_up"), 1.0);
    assert_shipped_exactly_once(&pg, &mut daemon, "router-a");
}

#[test]
fn kill_9_in_the_middle_of_a_ship_loses_nothing_and_repeats_nothing() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    pg.add_login_role("router_a", "secret-a", "eip_meter_daemon")
        .unwrap();
    let r = OneRouter::new(eip_v4(32));
    let store = pg.billing_store_section("router_a", "secret-a").unwrap();
    let mut daemon = Daemon::start_with_env(
        binary(),
        &r.topo.router,
        &r.config(&store),
        &[r.eip],
        &[("EIP_METER_TEST_SHIP_PAUSE", "after_copy")],
    )
    .unwrap();
    // Killed after the rows were copied, before the commit, after the commit (before the local
    // acknowledgement): each time a restart must go on from exactly where the store stands.
    for next in ["before_commit", "after_commit", ""] {
        r.burst(80);
        let paused = poll(Duration::from_secs(20), Duration::from_millis(50), || {
            daemon
                .log()
                .contains("ship paused (EIP_METER_TEST_SHIP_PAUSE)")
        });
        assert!(paused, "never paused; log:\n{}", daemon.log());
        let at = daemon.env[0].1.clone();
        daemon.kill().unwrap();
        println!(
            "killed at {at}: store holds up to {}",
            shipped_boundary(&pg, "router-a")
        );
        // The log of the next process starts clean of pause lines.
        std::fs::write(&daemon.log_path, "").unwrap();
        daemon.env = if next.is_empty() {
            Vec::new()
        } else {
            vec![("EIP_METER_TEST_SHIP_PAUSE".into(), next.into())]
        };
        daemon.spawn(&r.topo.router).unwrap();
        daemon.wait_ready(Duration::from_secs(30)).unwrap();
    }
    r.burst(80);
    wait_shipped(&pg, &daemon, "router-a", now() + 1, Duration::from_secs(30));
    assert_shipped_exactly_once(&pg, &mut daemon, "router-a");
}

#[test]
fn a_conflicting_row_is_refused_and_counted_and_a_second_machine_with_the_same_name_is_refused() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    pg.add_login_role("router_a", "secret-a", "eip_meter_daemon")
        .unwrap();
    let r = OneRouter::new(eip_v4(33));
    let store = pg.billing_store_section("router_a", "secret-a").unwrap();
    let mut daemon = Daemon::start(binary(), &r.topo.router, &r.config(&store), &[r.eip]).unwrap();
    r.burst(100);
    wait_shipped(&pg, &daemon, "router-a", now() + 1, Duration::from_secs(20));
    assert!(daemon.stop().unwrap());

    // The store's copy of one sample differs (a bad restore), and the watermark is rewound so
    // the router ships everything again.
    let (key, value) = stored_rows(&pg, "router-a")
        .into_iter()
        .find(|(_, v)| v.0 > 0)
        .unwrap();
    pg.query(&format!(
        "UPDATE samples SET bytes_in = bytes_in + 1000 WHERE host = 'router-a'
         AND eip = '{}' AND interval_start = {};
         UPDATE watermarks SET seq = 0, boundary = 0 WHERE host = 'router-a'",
        key.0, key.1
    ))
    .unwrap();
    daemon.spawn(&r.topo.router).unwrap();
    daemon.wait_ready(Duration::from_secs(30)).unwrap();
    let conflict = "sample conflict: the billing store holds this sample with other values; kept the stored one, recorded in sample_conflicts";
    assert!(
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            !daemon.log_events(conflict).is_empty()
        }),
        "no conflict logged:\n{}",
        daemon.log()
    );
    let event = &daemon.log_events(conflict)[0];
    assert_eq!(event["level"], "ERROR");
    assert_eq!(event["fields"]["stored_bytes_in"], value.0 + 1000);
    assert_eq!(event["fields"]["offered_bytes_in"], value.0);
    assert_eq!(
        metric(
            &daemon,
            &r.topo.router,
            "eip_meter_billing_store_ship_conflicts_total"
        ),
        1.0
    );
    assert_eq!(
        pg.query(&format!(
            "SELECT stored_in, offered_in FROM sample_conflicts WHERE interval_start = {}",
            key.1
        ))
        .unwrap(),
        format!("{}|{}", value.0 + 1000, value.0)
    );
    // Refused: the stored row is as it was, nothing was summed.
    assert_eq!(stored_rows(&pg, "router-a")[&key].0, value.0 + 1000);

    // Another machine (its own local store) configured with the same host name is refused.
    let other = OneRouter::new(eip_v4(34));
    let twin = Daemon::start(
        binary(),
        &other.topo.router,
        &other.config(&store),
        &[other.eip],
    )
    .unwrap();
    assert!(
        poll(Duration::from_secs(20), Duration::from_millis(100), || {
            twin.log()
                .contains("is already registered by another machine")
        }),
        "twin not refused:\n{}",
        twin.log()
    );
    assert_eq!(
        metric(&twin, &other.topo.router, "eip_meter_billing_store_up"),
        0.0
    );
    assert_eq!(pg.value::<i64>("SELECT count(*) FROM hosts").unwrap(), 1);
    drop(twin);
    drop(daemon);
}

#[test]
fn a_wrong_password_or_url_is_a_clear_error_and_metering_goes_on() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    pg.add_login_role("router_a", "secret-a", "eip_meter_daemon")
        .unwrap();
    let r = OneRouter::new(eip_v4(35));
    let wrong_password = pg
        .billing_store_section("router_a", "not-the-password")
        .unwrap();
    let (ok, said) = validate_in(&r.topo.router, binary(), &r.config(&wrong_password)).unwrap();
    println!("{said}");
    assert!(!ok);
    assert!(
        said.contains("password authentication failed for user \"router_a\""),
        "{said}"
    );
    let wrong_url = format!(
        "\n[billing_store]\nurl = \"host=/nonexistent dbname=billing user=router_a\"\npassword_file = \"{}\"\n",
        pg.password_file("a", "secret-a").unwrap().display()
    );
    let (ok, said) = validate_in(&r.topo.router, binary(), &r.config(&wrong_url)).unwrap();
    println!("{said}");
    assert!(!ok);
    assert!(
        said.contains("cannot connect to the billing store router_a@/nonexistent"),
        "{said}"
    );
    let with_password =
        "\n[billing_store]\nurl = \"postgres://router_a:secret@db.example/billing\"\n";
    let (ok, said) = validate_in(&r.topo.router, binary(), &r.config(with_password)).unwrap();
    assert!(!ok && said.contains("must not hold the password"), "{said}");

    // Started anyway: it says why it cannot ship, once, and meters and commits locally.
    let mut daemon = Daemon::start(
        binary(),
        &r.topo.router,
        &r.config(&wrong_password),
        &[r.eip],
    )
    .unwrap();
    let sent = r.burst(200);
    thread::sleep(Duration::from_secs(3));
    let stopped = daemon.log_events(
        "billing store: shipping stopped; rounds are kept locally and shipped when it works again",
    );
    assert_eq!(stopped.len(), 1, "{}", daemon.log());
    let error = stopped[0]["fields"]["error"].as_str().unwrap();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(
        !daemon.log().contains("not-the-password"),
        "the password was logged"
    );
    assert_eq!(daemon.counters().unwrap().eip(r.eip).inbound_bytes, sent);
    assert!(daemon.stop().unwrap());
    let local: u64 = daemon.samples().unwrap().iter().map(|s| s.bytes_in).sum();
    assert_eq!(
        local, sent,
        "metered and committed locally while the store refused"
    );
    assert_eq!(pg.value::<i64>("SELECT count(*) FROM hosts").unwrap(), 0);
}
