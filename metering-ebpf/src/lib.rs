//! Host-side stub so `metering-daemon` can name this crate as a build dependency (which makes
//! cargo rebuild the daemon when the programs change). The programs are in `src/main.rs`.
#![no_std]
