//! TLS to a store reached over TCP.

use eip_meter_tests::{postgres::Postgres, require_root};

use super::binary;

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
