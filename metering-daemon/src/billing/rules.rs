//! The billing rules, exactly as the product documents state them, over complete sample sets.
//! Naive on purpose (sort everything): these are the reference implementations.

use super::BPS_PER_MBPS;

/// Enhanced-95 daily peak in bit/s: sort the day's samples descending, discard the top 4, the
/// 5th is the peak; with fewer than 5 samples, the smallest. `None` for a day without samples.
pub fn enhanced_daily_peak_bps(samples: &[u64]) -> Option<u64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    if sorted.len() >= 5 {
        Some(sorted[4])
    } else {
        sorted.last().copied()
    }
}

/// Truncates bit/s to whole Mbit/s (the fraction is discarded, never rounded).
pub const fn mbps_floor(bps: u64) -> u64 {
    bps / BPS_PER_MBPS
}

/// Classic 95th percentile: sort descending, discard the top `floor(5% x n)`, take the next.
/// 8640 samples (30 days) -> discard 432, bill the 433rd. `None` without samples.
pub fn classic_p95(samples: &[u64]) -> Option<u64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.get(discarded(sorted.len())).copied()
}

/// How many top samples the classic rule discards: `floor(5% x n)`.
pub const fn discarded(n: usize) -> usize {
    n * 5 / 100
}

/// Enhanced-95 average monthly peak in Mbit/s: the mean of the 5 highest daily peaks (of all
/// of them with fewer than 5 days), truncated. `None` for a month without daily peaks.
pub fn enhanced_average_peak_mbps(daily_peaks_mbps: &[u64]) -> Option<u64> {
    // The 5 highest, kept in place (no allocation: a month end does this for every EIP).
    let mut kept = [0u64; 5];
    let mut len = 0;
    for &peak in daily_peaks_mbps {
        if len < kept.len() {
            kept[len] = peak;
            len += 1;
        } else if let Some(lowest) = kept.iter_mut().min()
            && peak > *lowest
        {
            *lowest = peak;
        }
    }
    let top = &kept[..len];
    if top.is_empty() {
        return None;
    }
    let sum: u128 = top.iter().map(|&v| u128::from(v)).sum();
    Some((sum / top.len() as u128) as u64)
}

/// Daily baseline = 20% of the largest bandwidth set that day, exact (as a fraction: x/5).
/// Monthly baseline = day-weighted mean of the daily baselines, truncated to Mbit/s:
/// `floor(sum(largest_d) / (5 x days))`. `None` without days.
pub fn monthly_baseline_mbps(daily_largest_bandwidth_mbps: &[u64]) -> Option<u64> {
    if daily_largest_bandwidth_mbps.is_empty() {
        return None;
    }
    let sum: u128 = daily_largest_bandwidth_mbps
        .iter()
        .map(|&v| u128::from(v))
        .sum();
    Some((sum / (5 * daily_largest_bandwidth_mbps.len() as u128)) as u64)
}

/// Monthly peak = max(monthly baseline, average monthly peak).
pub fn billed_peak_mbps(average_peak_mbps: Option<u64>, baseline_mbps: Option<u64>) -> Option<u64> {
    match (average_peak_mbps, baseline_mbps) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).max(b.unwrap_or(0))),
    }
}

/// Enhanced-95 fee in the price's minor unit, truncated:
/// `peak x price x in-use days / calendar days`, with in-use days given exactly as
/// `in_use_samples / samples_per_day`.
pub fn enhanced95_fee(
    billed_peak_mbps: u64,
    price_per_mbps: u64,
    in_use_samples: u64,
    samples_per_day: u64,
    calendar_days: u64,
) -> u64 {
    let num =
        u128::from(billed_peak_mbps) * u128::from(price_per_mbps) * u128::from(in_use_samples);
    let den = u128::from(samples_per_day) * u128::from(calendar_days);
    (num / den.max(1)) as u64
}

/// Pay-by-traffic daily fee in the price's minor unit, truncated: the full daily retention fee
/// (even for a partial first day) plus outbound bytes x price per GB.
pub fn traffic_daily_fee(
    retention_fee: u64,
    outbound_bytes: u64,
    price_per_gb: u64,
    gb_bytes: u64,
) -> u64 {
    let traffic =
        u128::from(outbound_bytes) * u128::from(price_per_gb) / u128::from(gb_bytes.max(1));
    retention_fee + traffic as u64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Against the rule as written: sort the daily peaks, average the 5 highest, truncate.
        #[test]
        fn the_average_peak_is_the_mean_of_the_five_highest(
            peaks in proptest::collection::vec(any::<u64>(), 0..40),
        ) {
            let mut sorted = peaks.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let top = &sorted[..sorted.len().min(5)];
            let expected = (!top.is_empty()).then(|| {
                (top.iter().map(|&v| u128::from(v)).sum::<u128>() / top.len() as u128) as u64
            });
            prop_assert_eq!(enhanced_average_peak_mbps(&peaks), expected);
        }
    }

    #[test]
    fn daily_peak_is_the_fifth_highest() {
        let s = [10, 90, 20, 80, 30, 70, 40, 60, 50];
        assert_eq!(enhanced_daily_peak_bps(&s), Some(50));
    }

    #[test]
    fn daily_peak_with_fewer_than_five_samples_is_the_smallest() {
        assert_eq!(enhanced_daily_peak_bps(&[7, 3, 9, 5]), Some(3));
        assert_eq!(enhanced_daily_peak_bps(&[42]), Some(42));
        assert_eq!(enhanced_daily_peak_bps(&[]), None);
        // Exactly five: the fifth is also the smallest.
        assert_eq!(enhanced_daily_peak_bps(&[5, 4, 3, 2, 1]), Some(1));
    }

    #[test]
    fn peaks_truncate_to_mbps() {
        assert_eq!(mbps_floor(299_999_999), 299);
        assert_eq!(mbps_floor(300_000_000), 300);
        assert_eq!(mbps_floor(999_999), 0);
    }

    #[test]
    fn classic_p95_discards_floor_five_percent() {
        // 8640 samples (30 days x 288): discard 432, bill the 433rd highest.
        let samples: Vec<u64> = (1..=8640).collect();
        assert_eq!(discarded(8640), 432);
        assert_eq!(classic_p95(&samples), Some(8640 - 432));
        // 19 samples: floor(0.95) = 0 discarded: the maximum.
        assert_eq!(classic_p95(&(1..=19).collect::<Vec<_>>()), Some(19));
        // 20 samples: 1 discarded.
        assert_eq!(classic_p95(&(1..=20).collect::<Vec<_>>()), Some(19));
        assert_eq!(classic_p95(&[]), None);
    }

    #[test]
    fn average_peak_is_the_truncated_mean_of_the_top_five_days() {
        assert_eq!(
            enhanced_average_peak_mbps(&[100, 1, 300, 200, 2, 400, 500]),
            Some(300)
        );
        // (500+400+300+200+101)/5 = 300.2 -> 300
        assert_eq!(
            enhanced_average_peak_mbps(&[101, 300, 200, 400, 500, 3]),
            Some(300)
        );
        // Fewer than 5 days: all of them. (10+11)/2 = 10.5 -> 10
        assert_eq!(enhanced_average_peak_mbps(&[10, 11]), Some(10));
        assert_eq!(enhanced_average_peak_mbps(&[]), None);
    }

    #[test]
    fn brief_daily_baseline_example() {
        // 100 -> 300 -> 200 Mbit/s in one day: the largest is 300, baseline 60.
        assert_eq!(monthly_baseline_mbps(&[300]), Some(60));
    }

    #[test]
    fn monthly_baseline_is_day_weighted_and_truncated() {
        // 10 days at 300 (60) and 20 days at 1000 (200): (600 + 4000) / 30 = 153.33 -> 153
        let days: Vec<u64> = [vec![300; 10], vec![1000; 20]].concat();
        assert_eq!(monthly_baseline_mbps(&days), Some(153));
    }

    #[test]
    fn billed_peak_is_the_larger() {
        assert_eq!(billed_peak_mbps(Some(250), Some(300)), Some(300));
        assert_eq!(billed_peak_mbps(Some(350), Some(300)), Some(350));
        assert_eq!(billed_peak_mbps(Some(350), None), Some(350));
        assert_eq!(billed_peak_mbps(None, None), None);
    }

    #[test]
    fn brief_enhanced95_fee_example() {
        // 300 Mbit/s x 15 x 16 in-use days / 30 calendar days = 2400.
        assert_eq!(enhanced95_fee(300, 15, 16 * 288, 288, 30), 2400);
        // In cents, with a partial day: 300 x 1500 x 16.5 / 30 = 247500.
        assert_eq!(enhanced95_fee(300, 1500, 16 * 288 + 144, 288, 30), 247_500);
    }

    #[test]
    fn brief_traffic_fee_example() {
        // Created 10:30, 1 GB outbound that day: 0.48 + 0.8 x 1 = 1.28 (in cents).
        assert_eq!(traffic_daily_fee(48, 1_000_000_000, 80, 1_000_000_000), 128);
    }
}
