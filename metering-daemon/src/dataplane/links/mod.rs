//! Keeping the programs on the uplinks, whatever happens to the interfaces.
//!
//! An uplink is a configured interface *name*. The kernel removes a TC attachment together
//! with its interface, so a bond reconfigured, a VF reset or a VLAN recreated leaves the
//! programs on nothing, and a daemon that does not notice counts zero from then on. Here:
//!
//! * [`attach`](attach): the first attachment (taking over the links a previous daemon
//!   pinned, replacing severed or misplaced ones) and the check that repairs an uplink: are our
//!   programs on the interface that has this name *now*? If not, drop whatever we held and
//!   attach afresh. Maps are never touched: counters, slots and policies carry on.
//! * [`query`]: the kernel's answer to "is our program on this interface?" (TCX query, or a
//!   dump of the clsact filters), and interface names and indexes.
//! * [`watch`]: the rtnetlink link notifications that trigger a check within milliseconds.
//!
//! The daemon also checks at every sampling round and every few seconds, for what sends no
//! notification (another program detaching ours with `BPF_LINK_DETACH`).
//!
//! Loss times are conservative: a loss found by a check is dated from the last time the
//! programs were seen in place, so a gap in metering is never understated.

mod attach;
mod query;
pub mod watch;

use serde::{Deserialize, Serialize};

pub(super) use attach::Uplinks;

/// Where an uplink stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkState {
    /// Both programs are on the interface that has this name.
    Attached,
    /// The interface exists but our programs are not on it (an attach failed).
    Detached,
    /// No interface has this name.
    Missing,
}

impl UplinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Detached => "detached",
            Self::Missing => "missing",
        }
    }
}

/// One uplink's attachment, as `eip-meter counters` and the metrics show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub interface: String,
    pub state: UplinkState,
    /// The interface our programs are on (when attached).
    pub ifindex: Option<u32>,
    /// `tcx` or `netlink`.
    pub mode: String,
    /// UNIX seconds since which the uplink is in this state (for a loss: the last time the
    /// programs were seen in place).
    pub since: i64,
    /// Times metering was lost on this uplink since the daemon started.
    pub detachments: u64,
    /// Seconds it was not metered since the daemon started, the current gap included.
    pub detached_seconds: f64,
}

/// Why an uplink stopped being metered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossCause {
    /// The interface was deleted.
    Deleted,
    /// The interface was renamed; the programs follow the configured name, not the device.
    Renamed { to: String },
    /// Another interface now has the name (deleted and created again, new ifindex).
    Rebuilt { ifindex: u32 },
    /// The interface is the same but our program is no longer on it (an operator's `tc`
    /// command, `bpftool link detach`, another agent).
    ProgramRemoved,
    /// No interface had the name when the daemon started.
    MissingAtStart,
    /// A link pinned by the previous daemon (`on_exit = "keep"`) lost its interface while the
    /// daemon was down.
    PinnedLinkSevered,
    /// A link pinned by the previous daemon is on an interface that no longer has the name.
    PinnedLinkElsewhere,
}

impl std::fmt::Display for LossCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deleted => f.write_str("interface deleted"),
            Self::Renamed { to } => write!(f, "interface renamed to {to}"),
            Self::Rebuilt { ifindex } => {
                write!(f, "interface recreated (now ifindex {ifindex})")
            }
            Self::ProgramRemoved => f.write_str("our program was removed from the interface"),
            Self::MissingAtStart => f.write_str("no such interface at start"),
            Self::PinnedLinkSevered => {
                f.write_str("the pinned link lost its interface while the daemon was down")
            }
            Self::PinnedLinkElsewhere => {
                f.write_str("the pinned link is on an interface that no longer has this name")
            }
        }
    }
}

/// A change in an uplink's metering, for the daemon to log and to mark samples by.
#[derive(Clone, Debug, PartialEq)]
pub enum UplinkEvent {
    /// Traffic on `interface` is not metered, at the latest from `since` (UNIX seconds).
    Lost {
        interface: String,
        /// The interface the programs were on, if they were.
        ifindex: Option<u32>,
        cause: LossCause,
        since: f64,
    },
    /// Both programs are on `interface`. `gap`: the time before this during which it was not
    /// metered, `[from, to)` in UNIX seconds (none when nothing was missed).
    Attached {
        interface: String,
        ifindex: u32,
        /// `tcx` or `netlink`.
        mode: &'static str,
        /// A link pinned by the previous daemon was taken over (no gap at all).
        took_over: bool,
        gap: Option<(f64, f64)>,
    },
    /// The interface exists but attaching failed; retried at the next check.
    AttachFailed { interface: String, error: String },
}
