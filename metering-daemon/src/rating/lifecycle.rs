//! Each EIP's lifecycle from its plan and state (pure: the caller gives the time):
//!
//! * a monthly package becomes `expired` at its expiry second; a renewal that moves the expiry
//!   past now makes it `active` again at once;
//! * `expired` (any plan) or `arrears` (set by the account system) stop service and billing;
//!   `retention` after service stopped, the EIP is released (removed);
//! * enhanced 95th: `arrears` is a grace period first (service and billing go on), then
//!   `frozen` for a retention period, then released;
//! * `frozen` set by an operator on any other plan stays until the operator changes it.

use chrono::NaiveTime;
use chrono_tz::Tz;

use crate::{
    billing::plans::{PACKAGE_EXPIRY_TIME, Plan, package_expiry_at},
    config::{EipConfig, EipState},
};

/// The periods of the lifecycle (`[lifecycle]` of the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleRules {
    pub tz: Tz,
    /// The time of day packages expire (23:59:59 by the product documents).
    pub package_expiry_time: NaiveTime,
    /// After service stopped (`expired`, `arrears`): until the EIP is released.
    pub retention_seconds: i64,
    /// Enhanced 95th in arrears: service and billing go on this long, then `frozen`.
    pub grace_seconds: i64,
    /// Enhanced 95th `frozen`: until the EIP is released.
    pub frozen_seconds: i64,
}

/// Default retention: 7 days.
pub const DEFAULT_RETENTION_SECONDS: i64 = 7 * 86_400;

impl LifecycleRules {
    /// The product documents' periods in `tz`: 7 days each.
    pub fn in_zone(tz: Tz) -> Self {
        Self {
            tz,
            package_expiry_time: PACKAGE_EXPIRY_TIME,
            retention_seconds: DEFAULT_RETENTION_SECONDS,
            grace_seconds: DEFAULT_RETENTION_SECONDS,
            frozen_seconds: DEFAULT_RETENTION_SECONDS,
        }
    }

    /// When a monthly package bought at `start` for `months` expires.
    pub fn expiry(&self, start: i64, months: u32) -> Option<i64> {
        package_expiry_at(start, months, self.tz, self.package_expiry_time)
    }
}

/// What happens to an EIP next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The package ran out: `expired`, blocked.
    Expire,
    /// The package was renewed past now: `active` again.
    Renew,
    /// An enhanced-95th grace period ended: `frozen`, blocked.
    Freeze,
    /// Retention ended: removed from the data plane and the inventory.
    Release,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Expire => "expire",
            Transition::Renew => "renew",
            Transition::Freeze => "freeze",
            Transition::Release => "release",
        }
    }

    /// The state after it (`None`: released).
    pub fn state(self) -> Option<EipState> {
        match self {
            Transition::Expire => Some(EipState::Expired),
            Transition::Renew => Some(EipState::Active),
            Transition::Freeze => Some(EipState::Frozen),
            Transition::Release => None,
        }
    }
}

/// The next transition of an EIP in `state` since `state_since`, and when it is due (it may be
/// in the past: due at once, effective at that time).
pub fn next(
    spec: &EipConfig,
    state_since: i64,
    rules: &LifecycleRules,
) -> Option<(i64, Transition)> {
    let expiry = match spec.plan {
        Some(Plan::Monthly { start, months }) => rules.expiry(start, months),
        _ => None,
    };
    let enhanced = spec.plan == Some(Plan::Enhanced95);
    match spec.state {
        EipState::Active => expiry.map(|e| (e, Transition::Expire)),
        EipState::Expired => match expiry {
            // Renewed past the moment it expired: back at once.
            Some(e) if e > state_since => Some((state_since, Transition::Renew)),
            _ => Some((state_since + rules.retention_seconds, Transition::Release)),
        },
        EipState::Arrears if enhanced => {
            Some((state_since + rules.grace_seconds, Transition::Freeze))
        }
        EipState::Arrears => Some((state_since + rules.retention_seconds, Transition::Release)),
        EipState::Frozen if enhanced => {
            Some((state_since + rules.frozen_seconds, Transition::Release))
        }
        EipState::Frozen => None,
    }
}

/// The state the kernel enforces: an enhanced-95th EIP in arrears keeps its service during the
/// grace period.
pub fn enforced_state(spec: &EipConfig) -> EipState {
    match (spec.plan, spec.state) {
        (Some(Plan::Enhanced95), EipState::Arrears) => EipState::Active,
        (_, s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rules() -> LifecycleRules {
        LifecycleRules::in_zone(chrono_tz::Asia::Shanghai)
    }

    fn cst(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        chrono_tz::Asia::Shanghai
            .with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp()
    }

    fn eip(plan: Option<Plan>, state: EipState) -> EipConfig {
        EipConfig {
            plan,
            state,
            ..EipConfig::new("192.0.2.1".parse().unwrap())
        }
    }

    #[test]
    fn a_package_expires_at_its_second_and_is_released_after_retention() {
        let plan = Some(Plan::Monthly {
            start: cst(2017, 8, 2, 10, 0, 0),
            months: 1,
        });
        let expiry = cst(2017, 9, 2, 23, 59, 59);
        assert_eq!(
            next(&eip(plan, EipState::Active), 0, &rules()),
            Some((expiry, Transition::Expire))
        );
        assert_eq!(
            next(&eip(plan, EipState::Expired), expiry, &rules()),
            Some((expiry + 7 * 86_400, Transition::Release))
        );
        // Renewed by a month: back at once.
        let renewed = Some(Plan::Monthly {
            start: cst(2017, 8, 2, 10, 0, 0),
            months: 2,
        });
        assert_eq!(
            next(&eip(renewed, EipState::Expired), expiry, &rules()),
            Some((expiry, Transition::Renew))
        );
    }

    #[test]
    fn arrears_stop_service_and_enhanced_95_gets_grace_then_frozen() {
        let t = 1_000_000;
        assert_eq!(
            next(&eip(Some(Plan::Hourly), EipState::Arrears), t, &rules()),
            Some((t + 7 * 86_400, Transition::Release))
        );
        let e95 = eip(Some(Plan::Enhanced95), EipState::Arrears);
        assert_eq!(
            enforced_state(&e95),
            EipState::Active,
            "grace: service goes on"
        );
        assert_eq!(
            next(&e95, t, &rules()),
            Some((t + 7 * 86_400, Transition::Freeze))
        );
        let frozen = eip(Some(Plan::Enhanced95), EipState::Frozen);
        assert_eq!(enforced_state(&frozen), EipState::Frozen);
        assert_eq!(
            next(&frozen, t, &rules()),
            Some((t + 7 * 86_400, Transition::Release))
        );
        assert_eq!(next(&eip(None, EipState::Frozen), t, &rules()), None);
        assert_eq!(
            next(&eip(Some(Plan::Traffic), EipState::Active), t, &rules()),
            None
        );
    }
}
