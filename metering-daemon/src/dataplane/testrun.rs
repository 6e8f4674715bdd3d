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
        self.test_run_gso(program, frame, repeat, None)
    }

    /// [`Self::test_run`] with the skb marked as a GSO super-packet of `gso = (segments,
    /// segment size)`, as a local TCP sender hands it to the device. The frame itself stays
    /// below a page (the kernel's limit for a test run): the programs take the super-packet's
    /// size from `skb->len` and its segment count from `gso_segs`, so the path is the same.
    pub fn test_run_gso(
        &mut self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
        gso: Option<(u32, u32)>,
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
        // `struct __sk_buff` (192 bytes in 6.x) as the context: zero but for the GSO fields,
        // which the kernel copies into the test skb's shared info.
        const SK_BUFF_SIZE: usize = 192;
        const GSO_SEGS_OFFSET: usize = 164;
        const GSO_SIZE_OFFSET: usize = 176;
        let mut skb_ctx = [0u8; SK_BUFF_SIZE];
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..Default::default()
        };
        if let Some((segments, size)) = gso {
            skb_ctx[GSO_SEGS_OFFSET..GSO_SEGS_OFFSET + 4].copy_from_slice(&segments.to_ne_bytes());
            skb_ctx[GSO_SIZE_OFFSET..GSO_SIZE_OFFSET + 4].copy_from_slice(&size.to_ne_bytes());
            attr.ctx_size_in = SK_BUFF_SIZE as u32;
            attr.ctx_in = skb_ctx.as_ptr() as u64;
        }
        // SAFETY: `attr` points at `frame` and `skb_ctx`, which outlive the call; no output
        // buffers are given.
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
