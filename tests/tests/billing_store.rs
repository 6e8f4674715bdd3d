//! Shipping to a real PostgreSQL 15 (a private cluster per test, `initdb` as `nobody`, Unix
//! socket only) and fleet figures with `eip-meter bill`:
//!
//! * an ECMP pair: the fleet figures equal `eip-meter compute` over both routers' exports, and
//!   the bytes shipped equal the bytes sent;
//! * PostgreSQL down for several rounds, then back: every round arrives, none twice;
//! * `kill -9` of the daemon at three points of a ship: none lost, none twice;
//! * a conflicting row is refused and counted; the same host name on a second machine is refused;
//! * a wrong password or URL: a clear error in `validate` and at start, metering goes on;
//! * `bill` twice changes nothing; a late sample adds a revision; the roles keep to their rows.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use eip_meter_tests::{
    Daemon, SampleRow, UdpSink, exposition_value, mixed_sizes,
    postgres::Postgres,
    require_root, send_udp,
    topology::{DUAL_INTERNET_V4, DualTopology, Topology, TopologyOptions, eip_v4},
    validate_in,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// One-second rounds in UTC: a test sees many of them.
const SAMPLER: &str = "interval_seconds = 1\ntimezone = \"UTC\"";

/// Checks `done` every `every` until it holds (true) or `timeout` passes (false).
fn poll(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(every);
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The boundary up to which the billing store holds `host`'s rounds (0: none yet).
fn shipped_boundary(pg: &Postgres, host: &str) -> i64 {
    pg.value::<i64>(&format!(
        "SELECT coalesce((SELECT boundary FROM watermarks WHERE host = '{host}'), 0)"
    ))
    .unwrap_or(0)
}

/// Waits until the billing store holds `host`'s rounds up to at least `t`.
fn wait_shipped(pg: &Postgres, daemon: &Daemon, host: &str, t: i64, timeout: Duration) {
    let reached = poll(timeout, Duration::from_millis(100), || {
        shipped_boundary(pg, host) >= t
    });
    assert!(
        reached,
        "{host} not shipped up to {t} within {timeout:?} (at {}); log:\n{}",
        shipped_boundary(pg, host),
        daemon.log()
    );
}

/// `(eip, interval_start) -> (bytes_in, bytes_out, state)` of `host` in the billing store.
fn stored_rows(pg: &Postgres, host: &str) -> BTreeMap<(IpAddr, i64), (u64, u64, String)> {
    pg.query(&format!(
        "SELECT host(eip), interval_start, bytes_in, bytes_out, state FROM samples
         WHERE host = '{host}' ORDER BY 1, 2"
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (
            (f[0].parse().unwrap(), f[1].parse().unwrap()),
            (
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].to_owned(),
            ),
        )
    })
    .collect()
}

/// The intervals the billing store says `host` sampled.
fn stored_rounds(pg: &Postgres, host: &str) -> BTreeSet<i64> {
    pg.query(&format!(
        "SELECT interval_start FROM rounds WHERE host = '{host}'"
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| l.parse().unwrap())
    .collect()
}

/// Checks the billing store against the local store of `daemon` (stopped) up to what it
/// shipped: every interval sampled locally is a round there, every local sample with traffic
/// is a row there with the same values, every row there is a local sample, and the byte sums
/// agree (a round shipped twice or lost would break one of these).
fn assert_store_matches_local(pg: &Postgres, daemon: &Daemon, host: &str) -> Vec<SampleRow> {
    let boundary = shipped_boundary(pg, host);
    let local: Vec<SampleRow> = daemon
        .samples()
        .unwrap()
        .into_iter()
        .filter(|s| s.start < boundary)
        .collect();
    assert!(!local.is_empty(), "no local samples before {boundary}");
    let rows = stored_rows(pg, host);
    let local_intervals: BTreeSet<i64> = local.iter().map(|s| s.start).collect();
    assert_eq!(
        stored_rounds(pg, host),
        local_intervals,
        "the rounds in the billing store are not the intervals sampled locally"
    );
    let by_key: BTreeMap<(IpAddr, i64), &SampleRow> =
        local.iter().map(|s| ((s.eip, s.start), s)).collect();
    for (key, (i, o, state)) in &rows {
        let l = by_key
            .get(key)
            .unwrap_or_else(|| panic!("stored row {key:?} has no local sample"));
        assert_eq!(
            (l.bytes_in, l.bytes_out, &l.state),
            (*i, *o, state),
            "{key:?}"
        );
    }
    for s in &local {
        if s.bytes_in > 0 || s.bytes_out > 0 {
            assert!(
                rows.contains_key(&(s.eip, s.start)),
                "local sample with traffic {s:?} missing from the billing store"
            );
        }
    }
    let sum = |f: fn(&SampleRow) -> u64| local.iter().map(f).sum::<u64>();
    let stored: (u64, u64) = rows
        .values()
        .fold((0, 0), |(a, b), (i, o, _)| (a + i, b + o));
    assert_eq!(stored, (sum(|s| s.bytes_in), sum(|s| s.bytes_out)));
    local
}

/// One metric of a daemon's exposition.
fn metric(daemon: &Daemon, ns: &eip_meter_tests::Netns, series: &str) -> f64 {
    let text = daemon.scrape(ns).unwrap().body;
    exposition_value(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// A single router shipping to `pg` as role `router_a`.
struct OneRouter {
    topo: Topology,
    eip: IpAddr,
    sink: UdpSink,
}

impl OneRouter {
    fn new(eip: IpAddr) -> Self {
        let topo = Topology::new(&TopologyOptions {
            tenant_addresses: vec![eip],
            ipv6: false,
        })
        .unwrap();
        let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
        Self { topo, eip, sink }
    }

    fn config(&self, store: &str) -> String {
        let mut c = self.topo.config_with(&[], "", SAMPLER);
        c.push_str(&format!("\n[[eip]]\naddress = \"{}\"\n{store}", self.eip));
        c
    }

    /// A burst of mixed-size datagrams from the Internet to the EIP; the IP-layer bytes.
    fn burst(&self, count: usize) -> u64 {
        let inet = Topology::internet_addr(self.eip, 0).ip();
        send_udp(
            &self.topo.internet,
            inet,
            self.sink.addr,
            mixed_sizes(count, false),
        )
        .unwrap()
    }
}

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
    assert!(
        !daemon
            .log_events("billing store shipping resumed")
            .is_empty()
    );
    assert_eq!(metric(&daemon, ns, "eip_meter_billing_store_up"), 1.0);
    assert!(daemon.stop().unwrap());
    assert_store_matches_local(&pg, &daemon, "router-a");
    assert_eq!(
        pg.value::<i64>("SELECT count(*) FROM sample_conflicts")
            .unwrap(),
        0
    );
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
    assert!(daemon.stop().unwrap());
    assert_store_matches_local(&pg, &daemon, "router-a");
    assert_eq!(
        pg.value::<i64>("SELECT count(*) FROM sample_conflicts")
            .unwrap(),
        0
    );
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

/// Rows a router with `host` would have shipped for `day` (UTC, 5-minute rounds): every round
/// complete, EIP present all day, traffic in a few intervals.
fn synthetic_day(pg: &Postgres, host: &str, day_start: i64, eip: &str, traffic: &[(i64, u64)]) {
    let mut sql = format!(
        "INSERT INTO hosts (host, instance, db_role, interval_seconds, timezone)
           VALUES ('{host}', 'synthetic-{host}', 'router_x', 300, 'UTC');
         INSERT INTO watermarks (host, seq, boundary) VALUES ('{host}', 288, {end});
         INSERT INTO rounds SELECT '{host}', {day_start} + 300 * k, 300, 'complete'
           FROM generate_series(0, 287) k;
         INSERT INTO presence VALUES ('{eip}', '{host}', {day_start}, NULL);
         INSERT INTO inventory_history VALUES ('{eip}', 'eip', '{host}', {day_start}, 100, NULL, 'active');
         SELECT eip_meter_ensure_partitions({day_start}, {end});",
        end = day_start + 86_400
    );
    for (k, bytes) in traffic {
        sql.push_str(&format!(
            "INSERT INTO samples VALUES ('{eip}', {}, '{host}', 300, {bytes}, {}, 'measured');",
            day_start + 300 * k,
            bytes / 2
        ));
    }
    pg.query(&sql).unwrap();
}

#[test]
fn bill_twice_changes_nothing_a_late_sample_adds_a_revision_and_roles_keep_to_their_rows() {
    require_root();
    let pg = Postgres::start(binary()).unwrap();
    pg.add_login_role("router_x", "secret-x", "eip_meter_daemon")
        .unwrap();
    pg.add_login_role("billing", "secret-billing", "eip_meter_billing")
        .unwrap();
    let yesterday = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let day_start = yesterday
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let eip = "203.0.113.36";
    let traffic: Vec<(i64, u64)> = (0..20)
        .map(|k| (k * 7, 3_000_000 + k as u64 * 100_000))
        .collect();
    synthetic_day(&pg, "router-x", day_start, eip, &traffic);
    let day = yesterday.to_string();
    let bill = || {
        let out = Command::new(binary())
            .args(["bill", "--store", &pg.url("billing"), "--day", &day])
            .env("EIP_METER_STORE_PASSWORD", "secret-billing")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let figures = || -> Vec<(i32, bool, serde_json::Value)> {
        pg.query(&format!(
            "SELECT revision, closed, figures FROM figures WHERE subject = '{eip}' AND period = '{day}' ORDER BY revision"
        ))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(3, '|').collect();
            (f[0].parse().unwrap(), f[1] == "t", serde_json::from_str(f[2]).unwrap())
        })
        .collect()
    };
    let (said, _) = bill();
    println!("{said}");
    assert!(
        said.contains("1 new revision(s)") && said.contains("period closed"),
        "{said}"
    );
    let first = figures();
    assert_eq!(first.len(), 1);
    assert!(first[0].1, "every host reported past the day: closed");

    // The same figures as compute over the same samples, zeros included (288 intervals).
    let mut csv = String::from("eip,interval_start,bytes_in,bytes_out\n");
    for k in 0..288i64 {
        let bytes = traffic.iter().find(|t| t.0 == k).map_or(0, |t| t.1);
        let at = chrono::DateTime::from_timestamp(day_start + 300 * k, 0)
            .unwrap()
            .to_rfc3339();
        csv.push_str(&format!("{eip},{at},{bytes},{}\n", bytes / 2));
    }
    let history = format!(
        "eip,effective_from,bandwidth_mbps\n{eip},{},100\n",
        chrono::DateTime::from_timestamp(day_start, 0)
            .unwrap()
            .to_rfc3339()
    );
    let reference = eip_meter_tests::compute_with(
        binary(),
        &csv,
        "UTC",
        300,
        &[("--bandwidth-history", &history)],
    )
    .unwrap();
    assert_eq!(first[0].2, reference["eips"][eip]["days"][&day]);
    assert_eq!(first[0].2["measured_samples"], 288);

    // Twice: nothing new.
    let (said, _) = bill();
    assert!(said.contains(" 0 new revision(s)"), "{said}");
    assert_eq!(figures().len(), 1);

    // A late sample (bigger than any): a new revision, logged; the first one stays.
    pg.query(&format!(
        "INSERT INTO samples VALUES ('{eip}', {}, 'router-x', 300, 90000000, 1, 'measured')",
        day_start + 300 * 200
    ))
    .unwrap();
    let (said, log) = bill();
    assert!(
        said.contains("1 new revision(s) (1 of closed periods: late samples)"),
        "{said}"
    );
    assert!(
        log.contains("figures of a closed period changed (late samples): new revision"),
        "{log}"
    );
    let revisions = figures();
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0], first[0]);
    assert_eq!(revisions[1].0, 2);
    assert_ne!(revisions[1].2["p95_bps"], first[0].2["p95_bps"]);

    // A store at a newer schema than this binary knows is refused, not written.
    pg.query("INSERT INTO eip_meter_schema (version) VALUES (99)")
        .unwrap();
    let out = Command::new(binary())
        .args([
            "store",
            "migrate",
            "--store",
            &pg.url(eip_meter_tests::postgres::SUPERUSER),
        ])
        .env(
            "EIP_METER_STORE_PASSWORD",
            eip_meter_tests::postgres::SUPERUSER_PASSWORD,
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && said.contains("schema version 99, newer than this eip-meter knows"),
        "{said}"
    );
    let refused = Command::new(binary())
        .args(["bill", "--store", &pg.url("billing"), "--day", &day])
        .env("EIP_METER_STORE_PASSWORD", "secret-billing")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "bill ran on a newer schema");
    pg.query("DELETE FROM eip_meter_schema WHERE version = 99")
        .unwrap();

    // The billing timer's own commands (deploy/eip-meter-bill.service) run against the store.
    let unit =
        std::fs::read_to_string(eip_meter_tests::deploy_file("eip-meter-bill.service")).unwrap();
    let password = pg
        .password_file("billing-credential", "secret-billing")
        .unwrap();
    for line in unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")) {
        let line = line.replace("%d/billing-password", &password.display().to_string());
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/eip-meter"));
        let out = Command::new(binary())
            .args(words)
            .env("EIP_METER_STORE_URL", pg.url("billing"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Roles: a router writes only its own host's rows and watermark; billing writes no samples.
    let as_router = |sql: &str| pg.query_as("router_x", "secret-x", sql).unwrap();
    let (ok, _, err) = as_router(&format!(
        "INSERT INTO samples VALUES ('{eip}', {}, 'router-y', 300, 1, 1, 'measured')",
        day_start + 300
    ));
    assert!(!ok && err.contains("row-level security"), "{err}");
    let (ok, out, err) =
        as_router("UPDATE watermarks SET seq = 300 WHERE host = 'router-x' RETURNING seq");
    assert!(ok && out == "300", "its own watermark forward: {out} {err}");
    let (ok, _, err) = as_router("UPDATE watermarks SET seq = 0 WHERE host = 'router-x'");
    assert!(!ok && err.contains("only advances"), "{err}");
    pg.query("INSERT INTO hosts (host, instance, db_role, interval_seconds, timezone) VALUES ('router-y', 'y', 'postgres', 300, 'UTC'); INSERT INTO watermarks VALUES ('router-y', 5, 0)").unwrap();
    let (ok, out, _) =
        as_router("UPDATE watermarks SET seq = 9 WHERE host = 'router-y' RETURNING seq");
    assert!(
        ok && out.is_empty(),
        "another host's watermark moved: {out}"
    );
    let (ok, _, err) = as_router("DELETE FROM samples");
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = as_router("SELECT count(*) FROM figures");
    assert!(!ok && err.contains("permission denied"), "{err}");
    let (ok, _, err) = pg.query_as(
        "billing",
        "secret-billing",
        &format!("INSERT INTO samples VALUES ('{eip}', {day_start}, 'router-x', 300, 1, 1, 'measured')"),
    ).unwrap();
    assert!(!ok && err.contains("permission denied"), "{err}");
}

#[test]
fn a_remote_store_is_reached_over_verified_tls_only() {
    require_root();
    // The server listens on localhost inside a namespace of this test, TLS only.
    let ns = eip_meter_tests::Netns::new("pg").unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    let pg = Postgres::start_tls(binary(), &ns).unwrap();
    pg.add_login_role("billing", "secret-billing", "eip_meter_billing")
        .unwrap();
    let ca = pg.ca_file().unwrap().to_owned();
    // No sslmode in the URL: over TCP eip-meter requires TLS anyway (never libpq's `prefer`).
    let url = format!(
        "host=localhost port=5432 dbname={} user=billing",
        eip_meter_tests::postgres::DATABASE
    );
    let bill = |url: &str, extra: &[&str]| {
        let out = ns
            .command(binary())
            .unwrap()
            .args([
                "bill",
                "--store",
                url,
                "--day",
                "yesterday",
                "--timezone",
                "UTC",
            ])
            .args(extra)
            .env("EIP_METER_STORE_PASSWORD", "secret-billing")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The test CA: verified, connected, billed (nothing to bill yet).
    let ca = ca.to_str().unwrap();
    let (ok, said) = bill(&url, &["--ca-file", ca]);
    assert!(ok, "{said}");
    let log = pg.server_log();
    assert!(
        log.contains("connection authorized: user=billing database=billing application_name=eip-meter SSL enabled"),
        "no TLS connection in the server log:\n{log}"
    );
    // The system's trust store does not know the test CA: refused, and said why.
    let (ok, said) = bill(&url, &[]);
    println!("{said}");
    assert!(
        !ok && said.contains("cannot connect to the billing store billing@localhost:5432/billing"),
        "{said}"
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    // Plain text is refused by this server, and never tried by eip-meter unless asked.
    let (ok, said) = bill(&format!("{url} sslmode=disable"), &["--ca-file", ca]);
    assert!(!ok && said.contains("no encryption"), "{said}");
}
