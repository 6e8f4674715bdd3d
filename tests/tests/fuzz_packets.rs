//! The packet path under malformed and hostile frames (`eip_meter_tests::packet_fuzz`): a short
//! seeded run, every past finding, and the hostile-tenant cases by name.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use eip_meter_tests::{
    frames::{Transport, frame},
    packet_fuzz::{self, Expected, check_frame},
    require_root,
};
use metering_common::{PROG_EGRESS, PROG_INGRESS};

const OPEN_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
const BLOCKED_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 13));
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

#[test]
fn a_seeded_run_breaks_no_invariant() {
    require_root();
    let report = packet_fuzz::run(Duration::from_secs(5), 20261128).unwrap();
    eprintln!("{report:?}");
    assert!(report.frames > 1_000, "{report:?}");
    assert!(
        report.metered_to_eips > 0 && report.metered_to_others > 0,
        "{report:?}"
    );
    assert!(report.uncounted > 0 && report.dropped > 0, "{report:?}");
}

/// Every frame in `fuzz/regressions/packets/` (one hex frame per file) still passes.
#[test]
fn past_findings_stay_fixed() {
    require_root();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/packets");
    let mut dp = packet_fuzz::dataplane("fuzzreg").unwrap();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.trim();
        let f: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        for program in [PROG_INGRESS, PROG_EGRESS] {
            check_frame(&mut dp, program, &f)
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        }
        files += 1;
    }
    assert!(files > 0, "no regression frames in {}", dir.display());
    dp.shutdown().unwrap();
}

/// A tenant cannot inflate an EIP's bill with a frame whose IP header claims more bytes than it
/// carries (the IP layer drops it after the programs): it is counted nowhere.
#[test]
fn a_length_that_lies_is_not_billed() {
    require_root();
    let mut dp = packet_fuzz::dataplane("fuzzlen").unwrap();
    let mut f = frame(OUTSIDE, OPEN_V4, Transport::Udp, 22);
    f[16..18].copy_from_slice(&65_535u16.to_be_bytes());
    assert_eq!(
        check_frame(&mut dp, PROG_INGRESS, &f).unwrap(),
        Some(Expected::Uncounted)
    );
    // The same frame told the truth is billed its 50 bytes.
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    assert_eq!(
        check_frame(&mut dp, PROG_INGRESS, &f).unwrap(),
        Some(Expected::Metered {
            addr: OPEN_V4,
            bytes: 50
        })
    );
    dp.shutdown().unwrap();
}

/// Spoofed sources, an EIP as both source and destination, and a flood at a blocked EIP: each
/// frame is metered to the one EIP the direction names, and the blocked EIP's flood changes
/// nothing but its own drop counters.
#[test]
fn a_hostile_tenant_moves_only_its_own_counts() {
    require_root();
    let mut dp = packet_fuzz::dataplane("fuzzhostile").unwrap();
    for (src, dst) in [
        (BLOCKED_V4, OPEN_V4),
        (OPEN_V4, OPEN_V4),
        (BLOCKED_V4, BLOCKED_V4),
        (OUTSIDE, BLOCKED_V4),
    ] {
        let f = frame(src, dst, Transport::Tcp, 100);
        for _ in 0..200 {
            for program in [PROG_INGRESS, PROG_EGRESS] {
                check_frame(&mut dp, program, &f)
                    .unwrap_or_else(|e| panic!("{src} -> {dst}: {e:#}"));
            }
        }
    }
    dp.shutdown().unwrap();
}
