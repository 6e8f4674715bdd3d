//! The inventory and its admin API for the control plane.
//!
//! The daemon holds one [`Inventory`]: the config file's EIPs and groups and those the API
//! created, each with its owner. Changes arrive as batches (the API), desired-state syncs (the
//! API) or a reloaded file; each is planned as a whole against the inventory
//! ([`model`]), then applied to the kernel, the local store and the sampler by the daemon.
//!
//! | file          | job                                                                  |
//! |---------------|----------------------------------------------------------------------|
//! | `model.rs`    | the inventory, ownership, the changes and their deltas (pure)         |
//! | `plan.rs`     | planning a batch: each item checked, then the whole (pure)            |
//! | `protocol.rs` | the wire format, version 1: JSON items to ops, each refused on its own |
//! | `record.rs`   | the inventory as the local store keeps it, and its audit rows          |
//! | `server.rs`   | HTTP/1.1 on the unix socket (and TCP with TLS + token), one task each  |
//! | `client.rs`   | the `eip-meter` commands' client of the socket                         |

pub mod client;
pub mod model;
mod plan;
pub mod protocol;
pub mod record;
pub mod server;
#[cfg(test)]
mod tests;

pub use model::{Delta, Held, Inventory, ItemError, Limits, Op, Source, Summary};
