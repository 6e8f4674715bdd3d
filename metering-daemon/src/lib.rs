//! eip-meter: meters and polices the traffic of cloud Elastic IPs on Linux routers.
//!
//! * [`config`]: the TOML configuration and its validation.
//! * [`dataplane`]: everything that touches the kernel (eBPF load, pins, attach, maps).
//! * [`slots`]: pure `EIP -> slot` bookkeeping.
//! * [`edit`]: comment-preserving config edits for live changes.
//! * [`policy`]: pure translation of caps, groups and states into kernel policy.
//! * [`daemon`]: the long-running loop ([`daemon::run`]).
//! * [`report`]: counter tables and JSON.
//! * [`cli`]: the `eip-meter` command line.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod edit;
pub mod policy;
pub mod report;
pub mod sampler;
pub mod slots;
pub mod store;

pub use daemon::run;
pub mod billing;
