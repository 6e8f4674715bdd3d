//! Measuring the programs in place: `BPF_PROG_TEST_RUN` against the live maps, and the kernel's
//! run-time statistics. For benchmarks and tests; the daemon never calls these.

use std::io;

use metering_common::{PROG_EGRESS, PROG_INGRESS};

use super::{Dataplane, DataplaneError, ProgramRunStats};

impl Dataplane {
    /// Runs `program` on `frame` (an Ethernet frame) `repeat` times in the kernel with
    /// `BPF_PROG_TEST_RUN`, against the live maps; returns the program's return code and the
    /// kernel's average nanoseconds per run. For benchmarks and tests: nothing is sent.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32), DataplaneError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let fd = self
            .loaded_program(program)?
            .fd()
            .map_err(|source| DataplaneError::Program {
                program,
                op: "fd".into(),
                source,
            })?
            .as_fd()
            .as_raw_fd();
        /// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
        #[repr(C)]
        #[derive(Default)]
        struct TestRunAttr {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        // SAFETY: `attr` points at `frame`, which outlives the call; no output buffers are given.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if ret < 0 {
            return Err(DataplaneError::Program {
                program,
                op: "BPF_PROG_TEST_RUN".into(),
                source: aya::programs::ProgramError::IOError(io::Error::last_os_error()),
            });
        }
        Ok((attr.retval, attr.duration))
    }

    /// Time the kernel spent in each program and how often it ran, since it was loaded. The
    /// kernel counts these only while run-time statistics are on (`BPF_ENABLE_STATS`, see
    /// `aya::sys::enable_stats`, or the `kernel.bpf_stats_enabled` sysctl); otherwise they stay
    /// zero.
    pub fn program_run_stats(&mut self) -> Result<Vec<ProgramRunStats>, DataplaneError> {
        [PROG_INGRESS, PROG_EGRESS]
            .into_iter()
            .map(|program| {
                let info = self.loaded_program(program)?.info().map_err(|source| {
                    DataplaneError::Program {
                        program,
                        op: "read info".to_owned(),
                        source,
                    }
                })?;
                Ok(ProgramRunStats {
                    program,
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}
