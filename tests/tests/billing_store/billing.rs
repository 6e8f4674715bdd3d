//! `eip-meter bill`: revisions, late samples, the schema version, the timer's commands, roles.

use std::process::Command;

use eip_meter_tests::{postgres::Postgres, require_root};

use super::binary;

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

/// `eip-meter bill --day DAY` as the billing role, which must succeed; its stdout and stderr.
fn run_bill(pg: &Postgres, day: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new(binary())
        .args(["bill", "--store", &pg.url("billing"), "--day", day])
        .args(extra)
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
    let bill = || run_bill(&pg, &day, &[]);
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

/// `bill --prices`: the subjects with a plan are rated for the day and their lines written to
/// `charges` (the seeds' examples: 0.48 + 0.8 x 1 GB for traffic, 0.03 then 0.06 an hour from
/// 10:30 for an hourly 1 Mbit/s EIP, not billed the two hours it was in arrears), once:
/// billing again changes nothing.
#[test]
fn bill_with_prices_writes_the_charge_lines_of_each_plan_once() {
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
    let (by_traffic, by_hour) = ("203.0.113.38", "203.0.113.39");
    // 2 GB in, so 1 GB out (the synthetic rows send half as much out).
    synthetic_day(
        &pg,
        "router-x",
        day_start,
        by_traffic,
        &[(100, 2_000_000_000)],
    );
    let created = day_start + 10 * 3600 + 1800;
    pg.query(&format!(
        "UPDATE inventory_history SET plan = 'traffic' WHERE subject = '{by_traffic}';
         INSERT INTO presence VALUES ('{by_hour}', 'router-x', {created}, NULL);
         INSERT INTO inventory_history (subject, kind, host, effective_from, bandwidth_mbps, state, plan)
           VALUES ('{by_hour}', 'eip', 'router-x', {created}, 1, 'active', 'hourly'),
                  ('{by_hour}', 'eip', 'router-x', {arrears}, 1, 'arrears', 'hourly'),
                  ('{by_hour}', 'eip', 'router-x', {paid}, 1, 'active', 'hourly');",
        arrears = day_start + 20 * 3600,
        paid = day_start + 22 * 3600,
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "currency = \"CNY\"\n[hourly]\nper_mbps = \"0.06\"\n[traffic]\nretention_per_day = \"0.48\"\nper_gb = \"0.8\"\n",
    )
    .unwrap();
    let prices = prices.to_str().unwrap().to_owned();
    let bill = || run_bill(&pg, &yesterday.to_string(), &["--prices", &prices]).0;
    let out = bill();
    assert!(
        out.contains("charges: 13 line(s) for 2 subject(s) with a plan, 13 new or changed"),
        "{out}"
    );
    let lines = pg
        .query(&format!(
            "SELECT subject, settled_at - {day_start}, amount FROM charges ORDER BY settled_at, subject"
        ))
        .unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines[0], format!("{by_hour}|{}|0.03", 11 * 3600));
    assert_eq!(lines[1], format!("{by_hour}|{}|0.06", 12 * 3600));
    assert_eq!(lines.len(), 13);
    assert!(
        lines.contains(&format!("{by_traffic}|86400|1.28").as_str()),
        "{lines:?}"
    );
    let total: String = pg.query("SELECT sum(amount) FROM charges").unwrap();
    assert_eq!(total.trim(), "1.97", "0.03 + 11 x 0.06 + 1.28");
    let exact: String = pg
        .query(&format!(
            "SELECT exact FROM charges WHERE subject = '{by_traffic}'"
        ))
        .unwrap();
    assert_eq!(exact.trim().parse::<f64>().unwrap(), 1.28);
    // Again: the same lines, nothing written.
    let out = bill();
    assert!(out.contains("0 new or changed, 13 unchanged"), "{out}");
}
