//! The operator's reports from the local store, without a daemon: `eip-meter report` gives the
//! figures `eip-meter compute` recomputes from the exported samples, and `eip-meter plot`
//! draws a chart that headless Chromium (Debian's package) renders as a chart, not a blank page.

use std::{
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use eip_meter_tests::{
    Daemon, UdpSink, require_root, send_udp,
    topology::{Topology, TopologyOptions, eip_v4},
};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_eip-meter-under-test"))
}

/// Renders `svg` in headless Chromium and returns the screenshot's RGBA pixels.
fn screenshot(svg: &Path, dir: &Path) -> (u32, u32, Vec<u8>) {
    let png = dir.join("chart.png");
    eip_meter_tests::render_svg(svg, &png, dir).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf[..info.buffer_size()].to_vec(),
        png::ColorType::Rgb => buf[..info.buffer_size()]
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

#[test]
fn report_agrees_with_compute_and_the_chart_renders_in_chromium() {
    require_root();
    let eip = eip_v4(97);
    let topo = Topology::new(&TopologyOptions {
        tenant_addresses: vec![eip],
        ipv6: false,
    })
    .unwrap();
    let mut config = topo.config_with(&[], "", "interval_seconds = 1\ntimezone = \"UTC\"");
    config.push_str(&format!(
        "\n[[eip]]\naddress = \"{eip}\"\nbandwidth_mbps = 100\n"
    ));
    let mut daemon = Daemon::start(binary(), &topo.router, &config, &[eip]).unwrap();
    let sink = UdpSink::bind(&topo.tenant, SocketAddr::new(eip, 0)).unwrap();
    let inet = Topology::internet_addr(eip, 0).ip();
    // Seven bursts of different sizes, each in its own second: the day's 5th highest sample
    // (its enhanced-95 peak) is one of them.
    for burst in 1..=7usize {
        let started = Instant::now();
        send_udp(&topo.internet, inet, sink.addr, vec![1400; 150 * burst]).unwrap();
        thread::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed()));
    }
    thread::sleep(Duration::from_millis(2500));
    assert!(daemon.stop().unwrap());
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();

    // The report (from the store, no daemon) and compute (from the export) agree.
    let report: serde_json::Value = serde_json::from_str(
        &daemon
            .subcommand(&[
                "report",
                "--json",
                "--day",
                &today,
                "--eip",
                &eip.to_string(),
            ])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["uplinks"][0]["state"], "unknown", "no daemon runs");
    let day = &report["eips"][0]["days"][0];
    assert_eq!(day["day"], today.as_str());
    let dir = tempfile::tempdir().unwrap();
    let computed = eip_meter_tests::compute(
        binary(),
        &daemon.subcommand(&["samples"]).unwrap(),
        "UTC",
        1,
    )
    .unwrap();
    let recomputed = &computed["eips"][eip.to_string()]["days"][&today];
    for key in [
        "samples",
        "measured_samples",
        "partial_samples",
        "inbound_bytes",
        "outbound_bytes",
        "enhanced_peak_mbps",
        "enhanced_peak_bps",
        "p95_bps",
    ] {
        assert_eq!(
            day[key], recomputed[key],
            "{key}: report {day} vs compute {recomputed}"
        );
    }
    let peak = day["enhanced_peak_mbps"].as_u64().unwrap();
    assert!(peak >= 1, "traffic shows in the peak: {day}");
    let table = daemon.subcommand(&["report", "--day", &today]).unwrap();
    assert!(table.contains(&format!("EIP {eip}")), "{table}");
    assert!(
        table.contains(&format!("enhanced peak {peak} Mbit/s")),
        "{table}"
    );

    // The chart: the same peak, drawn.
    let svg = dir.path().join("chart.svg");
    let out = daemon
        .subcommand(&[
            "plot",
            "--eip",
            &eip.to_string(),
            "--day",
            &today,
            "-o",
            svg.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.contains(&format!("daily enhanced peaks [{peak}] Mbit/s")),
        "{out}"
    );
    let (w, h, rgba) = screenshot(&svg, dir.path());
    assert_eq!((w, h), (1200, 600));
    let pixels = |r: u8, g: u8, b: u8| {
        rgba.chunks(4)
            .filter(|p| (p[0], p[1], p[2]) == (r, g, b))
            .count()
    };
    let non_white = rgba.chunks(4).filter(|p| p[..3] != [255, 255, 255]).count();
    let total = (w * h) as usize;
    assert!(
        non_white * 100 > total * 3,
        "a drawn chart, not a blank page: {non_white} of {total} pixels"
    );
    assert!(pixels(214, 39, 40) > 100, "the daily peak line is drawn");
    assert!(
        pixels(0, 0, 0) > 500,
        "axes, text and the cap line are drawn"
    );
}
