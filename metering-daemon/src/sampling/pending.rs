//! Commits the store refused (disk full, an I/O error), kept in memory and written first when
//! the store takes writes again.
//!
//! A round changes the in-memory series (samples pushed, days closed) before its commit; undoing
//! that would mean copying every series each round. So a refused commit is not undone: the
//! round stands in memory and its records wait here, in order, to be committed before anything
//! newer. The store then ends up with exactly the rounds an uninterrupted run would have
//! written. At most [`MAX_PENDING_ROUNDS`] rounds wait (memory: about 50 bytes per EIP each);
//! past that, rounds are skipped without touching any state, the kernel keeps counting, and the
//! first round after the store recovers covers the skipped intervals with one delta, split over
//! them as `partial` samples (as after a daemon outage).

use std::net::IpAddr;

use crate::{billing::series::Closed, store::RoundKind};

/// Rounds kept in memory while the store refuses writes: an hour of 5-minute rounds.
pub const MAX_PENDING_ROUNDS: usize = 12;

/// The records of one refused commit, owned.
pub(super) struct Pending {
    pub boundary: i64,
    pub samples: Vec<u8>,
    pub snapshot: Vec<u8>,
    pub new_eips: Vec<(u32, IpAddr)>,
    /// Closed figures, encoded ([`crate::store::encode_figures`]).
    pub figures: Vec<u8>,
    pub closed_groups: Vec<(String, Closed)>,
    pub kind: RoundKind,
    pub first_start: i64,
    pub presence_opened: Vec<(u32, i64)>,
    pub presence_closed: Vec<(u32, i64)>,
    /// Series due for a checkpoint; written from their state at the retry (newer is fine: a
    /// restart skips the samples a checkpoint already holds).
    pub checkpoints: Vec<(u32, IpAddr)>,
    /// A removal's EIPs, whose checkpoints are forgotten.
    pub forget: Option<Vec<u32>>,
}
