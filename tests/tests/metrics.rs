//! `/metrics` against a real Prometheus (the Debian package): what it stored equals what
//! `eip-meter counters` and the store say, every PromQL expression of the Grafana dashboard and
//! of the rules evaluates, a removed EIP leaves the exposition within a round, and an idle
//! client does not block a scrape.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, METRICS_ADDR, UdpSink, deploy_file, exposition_value, http, mixed_sizes,
    prometheus::Prometheus,
    require_root, send_udp,
    topology::{Topology, TopologyOptions, eip_v4},
    validate_in, wait_until,
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// A config with `a` capped at 100 Mbit/s and `b` in the shared bandwidth `shared-1` (300).
fn config(topo: &Topology, a: IpAddr, b: Option<IpAddr>) -> String {
    let mut c = topo.config_with(&[], "", "interval_seconds = 5\ntimezone = \"UTC\"");
    c.push_str(&format!(
        "\n[[group]]\nname = \"shared-1\"\nbandwidth_mbps = 300\n\n[[eip]]\naddress = \"{a}\"\nbandwidth_mbps = 100\n"
    ));
    if let Some(b) = b {
        c.push_str(&format!(
            "\n[[eip]]\naddress = \"{b}\"\ngroup = \"shared-1\"\n"
        ));
    }
    c
}

fn promtool_check_metrics(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`, installed by cargo xtask setup)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The figures `eip-meter report --json` gives for one EIP or group's open day and month.
fn open_figures(
    report: &serde_json::Value,
    kind: &str,
    name: &str,
) -> (serde_json::Value, serde_json::Value) {
    let subject = report[kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report}"))
        .clone();
    let day = subject["days"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["open"] == true)
        .cloned()
        .unwrap();
    let month = subject["months"][0].clone();
    (day, month)
}

#[test]
fn prometheus_stores_what_the_daemon_counted_and_every_dashboard_and_rule_expression_evaluates() {
    require_root();
    let (a, b) = (eip_v4(90), eip_v4(91));
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![a, b],
        ipv6: false,
    })
    .unwrap();
    let mut daemon =
        Daemon::start(binary(), &topo.router, &config(&topo, a, Some(b)), &[a, b]).unwrap();
    let rules = deploy_file("prometheus/eip-meter.rules.yml");
    let prom = Prometheus::start(&topo.router, METRICS_ADDR, &[&rules]).unwrap();

    let inet = Topology::internet_addr(a, 0).ip();
    for eip in [a, b] {
        let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
        send_udp(&topo.internet, inet, sink.addr, mixed_sizes(400, false)).unwrap();
    }

    // Wait for a round after the traffic and a scrape of it; compare while no other round can
    // come (rounds are 5 s apart: re-check the round did not move under the comparison).
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no stable comparison in 40 s:\n{}",
            prom.log()
        );
        let scrape = daemon.scrape(&topo.router).unwrap();
        let round = exposition_value(
            &scrape.body,
            "eip_meter_last_round_interval_start_timestamp_seconds",
        );
        let counted = daemon.counters().unwrap();
        let exposed_a = exposition_value(
            &scrape.body,
            &format!("eip_meter_eip_bytes_total{{eip=\"{a}\",direction=\"inbound\"}}"),
        );
        if round.is_none() || exposed_a != Some(counted.eip(a).inbound_bytes as f64) {
            std::thread::sleep(Duration::from_millis(500));
            continue; // the round after the traffic has not come yet
        }
        let stored_round = prom
            .query("eip_meter_last_round_interval_start_timestamp_seconds")
            .unwrap();
        let prom_round: Option<f64> = stored_round
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse().ok());
        if prom_round != round {
            std::thread::sleep(Duration::from_millis(300));
            continue; // Prometheus has not scraped that round yet
        }
        let report: serde_json::Value =
            serde_json::from_str(&daemon.subcommand(&["report", "--json"]).unwrap()).unwrap();
        let samples = daemon.samples().unwrap();
        let after = exposition_value(
            &daemon.scrape(&topo.router).unwrap().body,
            "eip_meter_last_round_interval_start_timestamp_seconds",
        );
        if after != round {
            continue; // a round came in between; compare again
        }

        // Counters: what Prometheus stored is what the kernel counted.
        for eip in [a, b] {
            let c = counted.eip(eip);
            for (direction, bytes) in [("inbound", c.inbound_bytes), ("outbound", c.outbound_bytes)]
            {
                let stored = prom
                    .value(&format!(
                        "eip_meter_eip_bytes_total{{eip=\"{eip}\",direction=\"{direction}\"}}"
                    ))
                    .unwrap();
                assert_eq!(stored, bytes as f64, "{eip} {direction}");
            }
        }
        let total_in: u64 = counted.eips.values().map(|c| c.inbound_bytes).sum();
        assert_eq!(
            prom.value("eip_meter_traffic_bytes_total{direction=\"inbound\"}")
                .unwrap(),
            total_in as f64
        );
        assert!(total_in > 0);
        assert_eq!(
            prom.value("eip_meter_non_eip_bytes_total{direction=\"inbound\"}")
                .unwrap(),
            counted.non_eip.inbound_bytes as f64
        );
        // Billing figures: what Prometheus stored is what the store says.
        let (day, month) = open_figures(&report, "eips", &a.to_string());
        let eip_label = format!("{{eip=\"{a}\"}}");
        assert_eq!(
            prom.value(&format!("eip_meter_eip_day_peak_mbps{eip_label}"))
                .unwrap(),
            day["enhanced_peak_mbps"].as_f64().unwrap()
        );
        assert_eq!(
            prom.value(&format!("eip_meter_eip_day_outbound_bytes{eip_label}"))
                .unwrap(),
            day["outbound_bytes"].as_f64().unwrap()
        );
        assert_eq!(
            prom.value(&format!(
                "eip_meter_eip_month_p95_bytes_per_second{eip_label}"
            ))
            .unwrap()
                * 8.0,
            month["p95_bps"].as_f64().unwrap()
        );
        assert!(
            month["p95_bps"].as_f64().unwrap() > 0.0,
            "traffic shows in the 95th"
        );
        assert_eq!(
            prom.value(&format!("eip_meter_eip_month_average_peak_mbps{eip_label}"))
                .unwrap(),
            month["enhanced_avg_peak_mbps"].as_f64().unwrap()
        );
        assert_eq!(month["baseline_mbps"], 20, "20% of 100 Mbit/s");
        assert_eq!(
            prom.value(&format!("eip_meter_eip_month_billed_peak_mbps{eip_label}"))
                .unwrap(),
            month["billed_peak_mbps"].as_f64().unwrap()
        );
        let (_, group_month) = open_figures(&report, "groups", "shared-1");
        assert_eq!(group_month["baseline_mbps"], 60, "20% of 300 Mbit/s");
        assert_eq!(
            prom.value("eip_meter_group_month_billed_peak_mbps{group=\"shared-1\"}")
                .unwrap(),
            group_month["billed_peak_mbps"].as_f64().unwrap()
        );
        assert_eq!(
            prom.value("eip_meter_group_bytes_total{group=\"shared-1\",direction=\"inbound\"}")
                .unwrap(),
            counted.eip(b).inbound_bytes as f64,
            "a group's bytes are its members'"
        );
        assert_eq!(
            prom.value("sum(eip_meter_samples_total)").unwrap(),
            samples.len() as f64,
            "every stored sample counted once"
        );
        promtool_check_metrics(&scrape.body);
        break;
    }

    // Every expression of the dashboard evaluates, with its variables filled in, once
    // Prometheus holds enough scrapes for rate() to have two samples in every window.
    wait_until(Duration::from_secs(30), "a dozen scrapes stored", || {
        Ok(prom.value("count_over_time(up[1m])").unwrap_or(0.0) >= 12.0)
    })
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_file("grafana/eip-meter.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    let mut with_data = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$instance", ".*")
                .replace("$eip", &a.to_string())
                .replace("$__rate_interval", "10s");
            let result = prom
                .query(&expr)
                .unwrap_or_else(|e| panic!("dashboard panel `{}`: {e}", panel["title"]));
            exprs += 1;
            if result.is_empty() {
                println!("no data (yet) for `{expr}`");
            } else {
                with_data += 1;
            }
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["definition"].as_str() {
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let (metric, label) = inner.split_once(", ").unwrap();
            let values = prom
                .api(&format!(
                    "label/{label}/values?match[]={}",
                    http::encode(metric)
                ))
                .unwrap();
            assert!(
                !values.as_array().unwrap().is_empty(),
                "variable {} has values",
                variable["name"]
            );
        }
    }
    assert!(exprs >= 20, "{exprs} dashboard expressions");
    assert!(
        with_data * 2 >= exprs,
        "most panels show data: {with_data} of {exprs}"
    );

    // Every rule loaded, evaluated without error, and its expression runs as a query.
    wait_until(Duration::from_secs(10), "rules evaluated", || {
        let groups = prom.api("rules")?;
        Ok(groups["groups"].as_array().unwrap().iter().all(|g| {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["health"] == "ok")
        }))
    })
    .unwrap();
    let groups = prom.api("rules").unwrap();
    let mut rules_seen = HashMap::new();
    for group in groups["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let query = rule["query"].as_str().unwrap();
            prom.query(query)
                .unwrap_or_else(|e| panic!("rule {}: {e}", rule["name"]));
            rules_seen.insert(
                rule["name"].as_str().unwrap().to_owned(),
                rule["health"].clone(),
            );
        }
    }
    assert_eq!(rules_seen.len(), 16, "{rules_seen:?}");
    // Nothing fires on a healthy router.
    let firing = prom.query("ALERTS{alertstate=\"firing\"}").unwrap();
    assert!(firing.is_empty(), "{firing:?}");

    // A client that connects and sends nothing does not hold up a scrape.
    let idle = topo
        .router
        .run(|| Ok(std::net::TcpStream::connect(METRICS_ADDR)?))
        .unwrap();
    let t = Instant::now();
    assert_eq!(daemon.scrape(&topo.router).unwrap().status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "scrape took {:?} beside an idle client",
        t.elapsed()
    );
    drop(idle);

    // A removed EIP leaves the exposition within a round.
    daemon.reload_applied(&config(&topo, a, None)).unwrap();
    let gone = format!("eip=\"{b}\"");
    wait_until(
        Duration::from_secs(7),
        "removed EIP gone from /metrics",
        || Ok(!daemon.scrape(&topo.router)?.body.contains(&gone)),
    )
    .unwrap();
    let body = daemon.scrape(&topo.router).unwrap().body;
    assert!(body.contains(&format!("eip=\"{a}\"")));
    assert_eq!(
        exposition_value(&body, "eip_meter_config_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
}

#[test]
fn the_metrics_address_in_use_is_a_clear_error_at_start_and_in_validate() {
    require_root();
    let a = eip_v4(92);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![a],
        ipv6: false,
    })
    .unwrap();
    // Another program holds the port in the router's namespace.
    let holder = topo
        .router
        .run(|| Ok(std::net::TcpListener::bind(METRICS_ADDR)?))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eip-meter.toml");
    std::fs::write(&path, config(&topo, a, None)).unwrap();
    let (ok, stderr) = validate_in(&topo.router, binary(), &config(&topo, a, None)).unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("metrics.listen (default 127.0.0.1:10317): 127.0.0.1:10317 is already in use by another program"),
        "{stderr}"
    );
    let run = topo
        .router
        .command(binary())
        .unwrap()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    // The refused start created its state directory (no Daemon guard here to remove it).
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("{}-state", topo.router.name())));
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("metrics.listen 127.0.0.1:10317: cannot listen there (choose another address, or set metrics.enabled = false): Address already in use"),
        "{stderr}"
    );
    drop(holder);
}
