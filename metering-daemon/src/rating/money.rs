//! Money: `rust_decimal` (exact base-10, 28 digits), never a float.

use rust_decimal::{Decimal, RoundingStrategy};

/// The amount a charge line is settled at: the exact amount rounded half away from zero to
/// the cent. Applied once per line, never to a partial sum.
pub fn settle(exact: Decimal) -> Decimal {
    exact.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// A price as written in a price file: a non-negative decimal string with at most 8 places
/// (`"0.06"`, `"23"`). A string, not a TOML float, so no binary rounding ever touches it.
pub fn parse_price(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let plain = t.strip_prefix('-').unwrap_or(t);
    let (int, frac) = plain.split_once('.').unwrap_or((plain, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(format!("`{text}` is not a decimal number (like \"0.06\")"));
    }
    let d: Decimal = t
        .parse()
        .map_err(|_| format!("`{text}` is not a decimal number"))?;
    if d.is_sign_negative() {
        return Err(format!("`{text}` is negative"));
    }
    if d.scale() > 8 {
        return Err(format!("`{text}` has more than 8 decimal places"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_half_away_from_zero_to_the_cent() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(settle(d("0.025")), d("0.03"));
        assert_eq!(settle(d("0.0249999")), d("0.02"));
        assert_eq!(settle(d("1.285")), d("1.29"));
        assert_eq!(settle(d("2400")), d("2400"));
    }

    #[test]
    fn prices_are_decimal_strings() {
        assert_eq!(parse_price("0.06").unwrap().to_string(), "0.06");
        assert!(parse_price("-1").is_err());
        assert!(parse_price("1e3").is_err());
        assert!(parse_price("0.123456789").is_err());
    }
}
