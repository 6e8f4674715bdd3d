//! eip-meter: meters (and, later, polices) the traffic of cloud Elastic IPs on Linux routers.
//!
//! * [`config`]: the TOML configuration and its validation.
//! * [`dataplane`]: everything that touches the kernel (eBPF load, pins, attach, maps).
//! * [`slots`]: pure `EIP -> slot` bookkeeping.
//! * [`daemon`]: the long-running loop ([`daemon::run`]).
//! * [`report`]: counter tables and JSON.
//! * [`cli`]: the `eip-meter` command line.
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod report;
pub mod sampler;
pub mod slots;
pub mod store;

pub use daemon::run;
pub mod billing;
