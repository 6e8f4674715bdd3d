//! The command line as an operator meets it: `validate` and `--help`.

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
