//! The command line as an operator meets it: `validate`, `--help`, and `rate` over `compute`.

use std::process::Command;

fn eip_meter(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

#[test]
fn validate_accepts_a_good_config() {
    let f =
        write_config("[dataplane]\ninterfaces = [\"lo\"]\n[[eip]]\naddress = \"203.0.113.10\"\n");
    let (ok, stdout, _) = eip_meter(&["validate", "--config", f.path().to_str().unwrap()]);
    assert!(ok);
    assert!(
        stdout.contains("OK (1 EIPs, 0 shared bandwidths, interfaces lo"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics on http://127.0.0.1:10317/metrics"),
        "{stdout}"
    );
}

#[test]
fn validate_lists_every_problem_with_its_line() {
    let f = write_config(
        "[dataplane]\ninterfaces = [\"no-such-if0\"]\n\n[[eip]]\naddress = \"203.0.113.10\"\n[[eip]]\naddress = \"203.0.113.10\"\n",
    );
    let path = f.path().to_str().unwrap().to_owned();
    let (ok, _, stderr) = eip_meter(&["validate", "--config", &path]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "{path}: line 2, column 15: interface `no-such-if0` does not exist"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 7, column 11: EIP 203.0.113.10 is listed twice (first on line 5)"),
        "{stderr}"
    );
}

#[test]
fn validate_rejects_a_malformed_address_and_unknown_field() {
    let f = write_config("[dataplane]\ninterfaces = [\"lo\"]\n[[eip]]\naddress = \"203.0.113\"\n");
    let (ok, _, stderr) = eip_meter(&["validate", "--config", f.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("line 4, column 11: invalid IP address syntax"),
        "{stderr}"
    );

    let f = write_config("[dataplane]\ninterfaces = [\"lo\"]\nbandwith = 5\n");
    let (ok, _, stderr) = eip_meter(&["validate", "--config", f.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("line 3, column 1: unknown field `bandwith`"),
        "{stderr}"
    );
}

#[test]
fn help_explains_the_commands() {
    let (ok, stdout, _) = eip_meter(&["--help"]);
    assert!(ok);
    for word in ["run", "validate", "counters", "SIGHUP"] {
        assert!(stdout.contains(word), "--help lacks {word}:\n{stdout}");
    }
}

/// `rate` over `compute`'s output: the seeds' worked examples end to end, from samples to
/// charge lines, and a plans file with a problem rates nothing.
#[test]
fn rate_turns_computed_figures_into_the_seeds_charges() {
    let samples = "eip,interval_start,bytes_in,bytes_out\n\
                   203.0.113.1,2017-08-02T10:30:00+08:00,0,600000000\n\
                   203.0.113.1,2017-08-02T23:55:00+08:00,0,400000000\n\
                   203.0.113.1,2017-08-03T00:00:00+08:00,0,5\n";
    let figures = eip_meter_tests::compute(
        std::path::Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test")),
        samples,
        "Asia/Shanghai",
        300,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let figures = write("figures.json", &figures.to_string());
    let prices = write(
        "prices.toml",
        "currency = \"CNY\"\n[monthly]\nper_mbps = \"23\"\n[hourly]\nper_mbps = \"0.06\"\n\
         [traffic]\nretention_per_day = \"0.48\"\nper_gb = \"0.8\"\n",
    );
    let plans = write(
        "plans.toml",
        "[[eip]]\naddress = \"203.0.113.1\"\nplan = \"traffic\"\ncreated = \"2017-08-02T10:30:00+08:00\"\n\
         [[eip]]\naddress = \"203.0.113.2\"\nplan = \"hourly\"\ncreated = \"2017-08-02T10:30:00+08:00\"\n\
         deleted = \"2017-08-02T12:15:00+08:00\"\nbandwidth = [{ at = \"2017-08-02T10:30:00+08:00\", mbps = 1 }]\n\
         [[eip]]\naddress = \"203.0.113.3\"\nplan = \"monthly\"\ncreated = \"2017-08-02T10:00:00+08:00\"\nmonths = 1\n\
         bandwidth = [{ at = \"2017-08-02T10:00:00+08:00\", mbps = 1 }]\n",
    );
    let (ok, out, err) = eip_meter(&[
        "rate",
        "--figures",
        &figures,
        "--plans",
        &plans,
        "--prices",
        &prices,
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lines: Vec<(String, String, String)> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["subject"].as_str().unwrap().to_owned(),
                l["settled_at"].as_str().unwrap().to_owned(),
                l["amount"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |s: &str, t: &str, a: &str| (s.to_owned(), t.to_owned(), a.to_owned());
    assert_eq!(
        lines,
        vec![
            expect("203.0.113.3", "2017-08-02T10:00:00+08:00", "23"),
            expect("203.0.113.2", "2017-08-02T11:00:00+08:00", "0.03"),
            expect("203.0.113.2", "2017-08-02T12:00:00+08:00", "0.06"),
            expect("203.0.113.2", "2017-08-02T12:15:00+08:00", "0.02"),
            // 1 GB outbound on the 2nd: 0.48 + 0.8 x 1.
            expect("203.0.113.1", "2017-08-03T00:00:00+08:00", "1.28"),
            // The 3rd, up to the end of the figures' last day: the retention fee (5 bytes out).
            expect("203.0.113.1", "2017-08-04T00:00:00+08:00", "0.48"),
        ]
    );
    assert_eq!(v["total"], "24.87");
    assert_eq!(v["lines"][4]["figures"]["outbound_bytes"], 1_000_000_000);

    let bad = write(
        "bad.toml",
        "[[eip]]\naddress = \"203.0.113.1\"\nplan = \"weekly\"\ncreated = \"2017-08-02T10:30:00+08:00\"\n",
    );
    let (ok, out, err) = eip_meter(&[
        "rate",
        "--figures",
        &figures,
        "--plans",
        &bad,
        "--prices",
        &prices,
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("plan `weekly` is not one of"), "{err}");
}
