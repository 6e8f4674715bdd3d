//! Charges from figures, by the product's billing types (pure: no I/O, no clock; money in
//! exact decimals).
//!
//! | file         | job                                                                      |
//! |--------------|--------------------------------------------------------------------------|
//! | `money.rs`   | decimal money and the rounding rule                                      |
//! | `prices.rs`  | the price file (TOML), validated with line and column                    |
//! | `lifecycle.rs` | each EIP's next transition (expiry, renewal, freeze, release) from its plan and state |
//! | `charges.rs` | charge lines of each plan: package, hourly, daily traffic, enhanced 95th, classic 95th |
//!
//! The rounding rule: every amount is computed exactly (decimal, products before the one
//! division), and each charge line is rounded once, when it is settled, half away from zero to
//! the cent (0.01). The exact amount stays beside it, so a month's lines can be checked against
//! its days' and the hourly segments against the per-second integral of the price.

pub mod charges;
pub mod lifecycle;
pub mod money;
pub mod prices;
#[cfg(test)]
mod tests;

pub use crate::billing::plans::{Plan, package_expiry};
pub use charges::{ChargeLine, Life, RateError, Window};
pub use lifecycle::{LifecycleRules, Transition};
pub use money::settle;
pub use prices::{Prices, Tariff};
