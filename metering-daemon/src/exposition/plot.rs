//! `eip-meter plot`: the chart an auditor shows a customer. One EIP's samples of a day or a
//! month (inbound and outbound, Mbit/s), each day's enhanced-95 peak, the period's classic
//! 95th, the monthly average peak, and the cap. Drawn as SVG with plotters; pure (samples in,
//! SVG text out). The figures are computed from the plotted samples with the billing rules.

use chrono::NaiveDate;
use plotters::prelude::*;

use crate::billing::{
    BPS_PER_MBPS, SampleRule, average_bps, billing_bps,
    calendar::{Calendar, Month},
    rules,
    series::Sample,
};

/// The period a chart covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartPeriod {
    Day(NaiveDate),
    Month(Month),
}

/// What the chart shows besides the samples.
pub struct ChartInput<'a> {
    pub title: &'a str,
    pub calendar: Calendar,
    pub rule: SampleRule,
    pub period: ChartPeriod,
    /// Samples of the period, in time order.
    pub samples: &'a [Sample],
    /// This router's cap in bit/s per direction (0: uncapped), and the purchased bandwidth.
    pub cap_bps: [u64; 2],
    pub purchased_mbps: Option<u64>,
    /// Zoom the time axis to the samples instead of the whole period (the figures are still
    /// the period's).
    pub fit: bool,
}

/// The figures drawn, also printed by the command.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChartFigures {
    /// `(day start, day end, enhanced peak Mbit/s)` of every day with samples.
    pub daily_peaks: Vec<(i64, i64, u64)>,
    /// Classic 95th of the period's samples, bit/s.
    pub p95_bps: Option<u64>,
    /// Average of the top 5 daily peaks (month charts), Mbit/s.
    pub average_peak_mbps: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct PlotError(String);

/// Draws the chart; returns the SVG text and the figures drawn.
pub fn draw(input: &ChartInput<'_>) -> Result<(String, ChartFigures), PlotError> {
    let cal = input.calendar;
    let (start, end) = match input.period {
        ChartPeriod::Day(d) => cal.day_bounds(d),
        ChartPeriod::Month(m) => cal.month_bounds(m),
    };
    let interval = cal.interval();
    let mbps = |bps: u64| bps as f64 / BPS_PER_MBPS as f64;
    let points: Vec<(i64, f64, f64, u64)> = input
        .samples
        .iter()
        .filter(|s| (start..end).contains(&s.start))
        .map(|s| {
            let i = average_bps(s.inbound_bytes, interval);
            let o = average_bps(s.outbound_bytes, interval);
            (s.start, mbps(i), mbps(o), billing_bps(input.rule, i, o))
        })
        .collect();

    let figures = figures(
        &cal,
        &points,
        start,
        end,
        matches!(input.period, ChartPeriod::Month(_)),
    );
    let cap = input.cap_bps.iter().copied().max().unwrap_or(0);
    let top = points
        .iter()
        .map(|p| p.1.max(p.2))
        .chain([mbps(cap), input.purchased_mbps.unwrap_or(0) as f64])
        .fold(1.0_f64, f64::max)
        * 1.1;

    // The time axis: the whole period from its local midnight, or (fit) the samples' span.
    // x counts minutes, hours or days from its start, so the ticks fall on whole ones.
    let (from, to) = match (input.fit, points.first(), points.last()) {
        (true, Some(a), Some(b)) => (a.0, b.0 + i64::from(interval)),
        _ => (start, end),
    };
    let unit = match (input.period, to - from) {
        (_, span) if span <= 2 * 3600 => 60.0,
        (ChartPeriod::Day(_), _) => 3600.0,
        (ChartPeriod::Month(_), _) => 86_400.0,
    };
    let x = |t: i64| (t.clamp(from, to) - from) as f64 / unit;
    let tz: chrono_tz::Tz = cal.timezone().parse().expect("a validated zone");
    let label_time = |v: &f64| {
        let t = chrono::DateTime::from_timestamp(from + (v * unit).round() as i64, 0)
            .map(|t| t.with_timezone(&tz))
            .expect("in range");
        if unit < 3600.0 {
            t.format("%H:%M:%S").to_string()
        } else if unit < 86_400.0 {
            t.format("%H:%M").to_string()
        } else {
            t.format("%m-%d").to_string()
        }
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 600)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(input.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x(to), 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_labels(match input.period {
                ChartPeriod::Day(_) => 13,
                ChartPeriod::Month(_) => 16,
            })
            .x_label_formatter(&label_time)
            .x_desc(format!("time ({})", cal.timezone()))
            .y_desc("Mbit/s (10^6 bit/s)")
            .draw()
            .map_err(|e| err(&e))?;

        let inbound = RGBColor(31, 119, 180);
        let outbound = RGBColor(44, 160, 44);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (x(p.0), p.1)),
                inbound.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("inbound")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], inbound));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (x(p.0), p.2)),
                outbound.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("outbound")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], outbound));

        let peak = RGBColor(214, 39, 40);
        let mut labelled = false;
        for &(d0, d1, p) in &figures.daily_peaks {
            let series = chart
                .draw_series(LineSeries::new(
                    [(x(d0), p as f64), (x(d1), p as f64)],
                    peak.stroke_width(3),
                ))
                .map_err(|e| err(&e))?;
            if !labelled {
                series
                    .label("enhanced-95 daily peak")
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 20, y)], peak.stroke_width(3))
                    });
                labelled = true;
            }
        }
        let mut hline = |value: f64, color: RGBColor, label: String| -> Result<(), PlotError> {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, value), (x(to), value)],
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            Ok(())
        };
        if let Some(p95) = figures.p95_bps {
            hline(
                mbps(p95),
                RGBColor(255, 127, 14),
                format!("classic 95th {:.3} Mbit/s", mbps(p95)),
            )?;
        }
        if let Some(avg) = figures.average_peak_mbps {
            hline(
                avg as f64,
                RGBColor(148, 103, 189),
                format!("average monthly peak {avg} Mbit/s"),
            )?;
        }
        if cap > 0 {
            hline(
                mbps(cap),
                RGBColor(0, 0, 0),
                format!("cap on this router {:.3} Mbit/s", mbps(cap)),
            )?;
        }
        if let Some(p) = input.purchased_mbps {
            hline(
                p as f64,
                RGBColor(127, 127, 127),
                format!("purchased {p} Mbit/s"),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok((svg, figures))
}

/// Daily peaks, the 95th of the period, and (for a month) the average peak, by the rules.
fn figures(
    cal: &Calendar,
    points: &[(i64, f64, f64, u64)],
    start: i64,
    end: i64,
    month: bool,
) -> ChartFigures {
    let mut daily_peaks = Vec::new();
    let mut day = cal.day_of(start);
    loop {
        let (d0, d1) = cal.day_bounds(day);
        if d0 >= end {
            break;
        }
        let values: Vec<u64> = points
            .iter()
            .filter(|p| (d0..d1).contains(&p.0))
            .map(|p| p.3)
            .collect();
        if let Some(peak) = rules::enhanced_daily_peak_bps(&values) {
            daily_peaks.push((d0, d1, rules::mbps_floor(peak)));
        }
        day = day.succ_opt().expect("dates in range");
    }
    let all: Vec<u64> = points.iter().map(|p| p.3).collect();
    let peaks: Vec<u64> = daily_peaks.iter().map(|d| d.2).collect();
    ChartFigures {
        p95_bps: rules::classic_p95(&all),
        average_peak_mbps: if month {
            rules::enhanced_average_peak_mbps(&peaks)
        } else {
            None
        },
        daily_peaks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::SampleState;

    const T0: i64 = 1_793_462_400; // 2026-11-01T00:00:00+08:00

    fn samples() -> Vec<Sample> {
        // Two days: day 1 at 1..=288 Mbit/s-ish, day 2 flat at 20 Mbit/s.
        (0..2 * 288)
            .map(|k| {
                let mbps = if k < 288 { k as u64 + 1 } else { 20 };
                Sample {
                    start: T0 + k as i64 * 300,
                    inbound_bytes: mbps * 1_000_000 * 300 / 8,
                    outbound_bytes: 0,
                    state: SampleState::Measured,
                }
            })
            .collect()
    }

    #[test]
    fn a_month_chart_draws_the_rules_figures() {
        let cal = Calendar::new("Asia/Shanghai", 300).unwrap();
        let s = samples();
        let (svg, f) = draw(&ChartInput {
            title: "EIP 203.0.113.10, 2026-11",
            calendar: cal,
            rule: SampleRule::Max,
            period: ChartPeriod::Month(Month::of(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap())),
            samples: &s,
            cap_bps: [75_000_000, 75_000_000],
            purchased_mbps: Some(100),
            fit: false,
        })
        .unwrap();
        // Day 1: 5th highest of 1..=288 is 284; day 2: 20.
        assert_eq!(
            f.daily_peaks.iter().map(|d| d.2).collect::<Vec<_>>(),
            vec![284, 20]
        );
        assert_eq!(f.average_peak_mbps, Some(152));
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        for text in [
            "inbound",
            "enhanced-95 daily peak",
            "classic 95th",
            "cap on this router 75.000 Mbit/s",
            "purchased 100 Mbit/s",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.matches("<polyline").count() >= 6, "lines drawn");
    }
}
