//! Each EIP's lifecycle on the router: the transitions the inventory says are due (a package's
//! expiry, a renewal, an enhanced-95th grace ending, a release after retention) are applied at
//! their second, as inventory changes of their own (store, kernel, sampler), effective when
//! they were due: those due while the daemon was down happen at start.

use tracing::{error, info};

use super::{Daemon, now_seconds};
use crate::inventory::Delta;

/// Transitions applied per change (the rest follow at once).
const BATCH: usize = 10_000;

impl Daemon {
    /// Applies every transition due by now.
    pub(super) fn run_lifecycle(&mut self) {
        let now = now_seconds().floor() as i64;
        let mut applied = false;
        loop {
            let due = self.inventory.due(now, BATCH);
            if due.is_empty() {
                break;
            }
            for (transition, delta) in &due {
                if let Delta::Eip {
                    address,
                    effective_at,
                    before,
                    ..
                } = delta
                {
                    info!(
                        eip = %address,
                        transition = transition.as_str(),
                        from = before.as_ref().map(|b| b.spec.state.as_str()),
                        to = transition.state().map_or("released", |s| s.as_str()),
                        effective_at,
                        late_seconds = now - effective_at,
                        "lifecycle transition"
                    );
                }
            }
            let deltas: Vec<Delta> = due.into_iter().map(|(_, d)| d).collect();
            if let Err(e) = self.apply_deltas(&deltas, "lifecycle", None) {
                error!(error = %e, transitions = deltas.len(), "lifecycle transitions not applied; retried in a second");
                self.lifecycle_retry_at = now_seconds() + 1.0;
                break;
            }
            applied = true;
        }
        if applied {
            self.publish();
        }
    }
}
