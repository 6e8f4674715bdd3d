//! eip-meter: meters and polices the traffic of cloud Elastic IPs on Linux routers.
//!
//! The modules follow the flow from packet to bill; each depends only on those below it.
//!
//! * [`cli`]: the `eip-meter` command line (the only place with `anyhow`).
//! * [`daemon`]: the long-running loop ([`daemon::run`]) that wires the stages together.
//! * [`exposition`]: `/metrics`, counter tables, reports and charts.
//! * [`inventory`]: the EIPs and groups with their owners, and the admin API.
//! * [`sampling`]: interval samples from the counters, committed each round; metering gaps.
//! * [`dataplane`]: everything that touches the kernel (eBPF load, pins, links, maps, netlink).
//! * [`store`]: the local crash-safe sample store.
//! * [`slots`], [`policy`], [`edit`]: pure inventory bookkeeping, kernel policy, config edits.
//! * [`config`]: the TOML configuration and its validation.
//! * [`rating`]: charges from figures by billing type, in exact decimal money (pure).
//! * [`billing`]: the billing rules and figures (pure).
//! * [`addr`]: what makes two spellings of an address the same EIP.
//! * [`fuzz`]: one check per input surface, for the fuzzers and their regression test.
pub mod addr;
pub mod billing;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod edit;
pub mod exposition;
pub mod fuzz;
pub mod inventory;
pub mod policy;
pub mod rating;
pub mod sampling;
pub mod slots;
pub mod store;

pub use daemon::run;

/// A hash map on foldhash (seeded per process) instead of SipHash, for the per-EIP indexes
/// that see a million lookups in one apply or round. Their keys come from the operator and the
/// store, never from packets.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
