//! The price file: what each billing type costs, validated like the config (every problem with
//! its line and column, unknown keys refused, prices as decimal strings).
//!
//! ```toml
//! currency = "CNY"
//! [monthly]                 # monthly package: the price of one month
//! per_mbps = "23"           # ... per Mbit/s, or by bandwidth size:
//! # sizes = [{ up_to_mbps = 5, price = "23" }, { up_to_mbps = 10, price = "40" }]
//! [hourly]                  # pay by configuration: the price of one hour
//! per_mbps = "0.06"
//! [traffic]                 # pay by traffic: per natural day
//! retention_per_day = "0.48"
//! per_gb = "0.8"
//! [enhanced95]              # per Mbit/s of the billed peak per month
//! per_mbps_month = "15"
//! [p95]                     # per Mbit/s of the month's 95th per month
//! per_mbps_month = "20"
//! ```

use std::ops::Range;

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

use super::money::parse_price;
use crate::config::{Problem, line_col};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    currency: Option<String>,
    monthly: Option<Spanned<TariffSection>>,
    hourly: Option<Spanned<TariffSection>>,
    traffic: Option<TrafficSection>,
    enhanced95: Option<PerMonthSection>,
    p95: Option<PerMonthSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TariffSection {
    per_mbps: Option<Spanned<String>>,
    sizes: Option<Vec<SizeSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeSection {
    up_to_mbps: Spanned<u64>,
    price: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficSection {
    retention_per_day: Spanned<String>,
    per_gb: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerMonthSection {
    per_mbps_month: Spanned<String>,
}

/// A price by bandwidth: per Mbit/s, or a price per size (the smallest size that holds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tariff {
    PerMbps(Decimal),
    /// `(up to Mbit/s, price)`, sizes ascending.
    Sizes(Vec<(u64, Decimal)>),
}

impl Tariff {
    /// The price for a bandwidth of `mbps`; `None` above the largest size.
    pub fn price(&self, mbps: u64) -> Option<Decimal> {
        match self {
            Tariff::PerMbps(p) => Some(*p * Decimal::from(mbps)),
            Tariff::Sizes(sizes) => sizes.iter().find(|(up, _)| mbps <= *up).map(|(_, p)| *p),
        }
    }
}

/// Pay-by-traffic prices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficPrices {
    pub retention_per_day: Decimal,
    pub per_gb: Decimal,
}

/// Every price, by billing type (a type without prices cannot be rated).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub currency: String,
    pub monthly: Option<Tariff>,
    pub hourly: Option<Tariff>,
    pub traffic: Option<TrafficPrices>,
    /// Per Mbit/s of the billed peak per month.
    pub enhanced95: Option<Decimal>,
    /// Per Mbit/s of the month's 95th per month.
    pub p95: Option<Decimal>,
}

impl Prices {
    /// Parses and validates a price file; every problem found, each with its place.
    pub fn parse(text: &str) -> Result<Prices, Vec<Problem>> {
        let locate = |span: Range<usize>| Some(line_col(text, span.start));
        let file: PriceFile = toml::from_str(text).map_err(|e| {
            vec![Problem {
                location: e.span().and_then(&locate),
                message: e.message().trim().to_owned(),
            }]
        })?;
        let mut problems = Vec::new();
        for (name, section) in [("monthly", &file.monthly), ("hourly", &file.hourly)] {
            let Some(section) = section else { continue };
            let t = section.get_ref();
            let at = locate(section.span());
            if t.per_mbps.is_some() == t.sizes.as_ref().is_some_and(|s| !s.is_empty()) {
                problems.push(Problem {
                    location: at,
                    message: format!("[{name}]: give either per_mbps or a non-empty sizes list"),
                });
            }
            if let Some(sizes) = &t.sizes {
                for pair in sizes.windows(2) {
                    if pair[1].up_to_mbps.get_ref() <= pair[0].up_to_mbps.get_ref() {
                        problems.push(Problem {
                            location: locate(pair[1].up_to_mbps.span()),
                            message: format!("[{name}]: sizes must be in ascending up_to_mbps"),
                        });
                    }
                }
                for s in sizes {
                    if *s.up_to_mbps.get_ref() == 0 {
                        problems.push(Problem {
                            location: locate(s.up_to_mbps.span()),
                            message: format!("[{name}]: up_to_mbps must be at least 1"),
                        });
                    }
                }
            }
        }
        let mut price = |s: &Spanned<String>, key: &str| match parse_price(s.get_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(Problem {
                    location: locate(s.span()),
                    message: format!("{key}: {e}"),
                });
                None
            }
        };
        let mut tariff = |section: &Option<Spanned<TariffSection>>, name: &str| {
            let section = section.as_ref()?;
            let t = section.get_ref();
            match (&t.per_mbps, &t.sizes) {
                (Some(p), None) => price(p, &format!("{name}.per_mbps")).map(Tariff::PerMbps),
                (None, Some(sizes)) if !sizes.is_empty() => {
                    let mut list = Vec::new();
                    for s in sizes {
                        let p = price(&s.price, &format!("{name}.sizes.price"))?;
                        list.push((*s.up_to_mbps.get_ref(), p));
                    }
                    Some(Tariff::Sizes(list))
                }
                _ => None,
            }
        };
        let monthly = tariff(&file.monthly, "monthly");
        let hourly = tariff(&file.hourly, "hourly");
        let traffic = file.traffic.as_ref().and_then(|t| {
            Some(TrafficPrices {
                retention_per_day: price(&t.retention_per_day, "traffic.retention_per_day")?,
                per_gb: price(&t.per_gb, "traffic.per_gb")?,
            })
        });
        let enhanced95 = file
            .enhanced95
            .as_ref()
            .and_then(|s| price(&s.per_mbps_month, "enhanced95.per_mbps_month"));
        let p95 = file
            .p95
            .as_ref()
            .and_then(|s| price(&s.per_mbps_month, "p95.per_mbps_month"));
        if file.monthly.is_none()
            && file.hourly.is_none()
            && file.traffic.is_none()
            && file.enhanced95.is_none()
            && file.p95.is_none()
        {
            problems.push(Problem {
                location: None,
                message: "no prices: give at least one of [monthly], [hourly], [traffic], [enhanced95], [p95]".to_owned(),
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Prices {
            currency: file.currency.unwrap_or_default(),
            monthly,
            hourly,
            traffic,
            enhanced95,
            p95,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_price_file_parses_exactly() {
        let p = Prices::parse(
            "currency = \"CNY\"\n[monthly]\nper_mbps = \"23\"\n[hourly]\nsizes = [{ up_to_mbps = 1, price = \"0.06\" }, { up_to_mbps = 5, price = \"0.25\" }]\n\
             [traffic]\nretention_per_day = \"0.48\"\nper_gb = \"0.8\"\n[enhanced95]\nper_mbps_month = \"15\"\n[p95]\nper_mbps_month = \"20\"\n",
        )
        .unwrap();
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(p.monthly.unwrap().price(2), Some(d("46")));
        let hourly = p.hourly.unwrap();
        assert_eq!(hourly.price(1), Some(d("0.06")));
        assert_eq!(hourly.price(3), Some(d("0.25")));
        assert_eq!(hourly.price(6), None);
        assert_eq!(p.traffic.unwrap().per_gb, d("0.8"));
        assert_eq!(p.enhanced95, Some(d("15")));
    }

    #[test]
    fn every_problem_is_located() {
        let e = Prices::parse(
            "[hourly]\nper_mbps = \"-0.06\"\n[monthly]\nsizes = [{ up_to_mbps = 5, price = \"1\" }, { up_to_mbps = 5, price = \"x\" }]\n",
        )
        .unwrap_err();
        let all: Vec<String> = e.iter().map(ToString::to_string).collect();
        let all = all.join("\n");
        assert!(
            all.contains("line 2, column 12: hourly.per_mbps: `-0.06` is negative"),
            "{all}"
        );
        assert!(
            all.contains("monthly.sizes.price: `x` is not a decimal number"),
            "{all}"
        );
        assert!(
            all.contains("sizes must be in ascending up_to_mbps"),
            "{all}"
        );
        let e = Prices::parse("[hourly]\nper_mbps = 0.06\n").unwrap_err();
        assert!(e[0].to_string().starts_with("line 2"), "{:?}", e);
        let e = Prices::parse("[hourly]\nper_mbps = \"1\"\nprice = \"2\"\n").unwrap_err();
        assert!(e[0].message.contains("unknown field"), "{:?}", e);
    }
}
