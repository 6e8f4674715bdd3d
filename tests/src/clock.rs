//! [`FakeClock`]: a wall clock a test steps forward and back for the processes started with
//! its environment. libfaketime (`LD_PRELOAD`) adds an offset read from a file at every call to
//! the realtime clock and leaves the monotonic clock alone: the process sees what a step of the
//! system clock (NTP, `date -s`) would show it, and the rest of the machine sees nothing.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

/// Where Debian's `libfaketime` package puts the library.
pub fn library() -> PathBuf {
    PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketime.so.1",
        std::env::consts::ARCH
    ))
}

pub struct FakeClock {
    dir: PathBuf,
    file: PathBuf,
    offset: i64,
}

impl FakeClock {
    /// A clock at offset zero.
    pub fn new() -> Result<Self> {
        ensure!(
            library().exists(),
            "libfaketime is not installed ({} missing): run `cargo xtask setup`",
            library().display()
        );
        let dir = std::env::temp_dir().join(crate::unique_tag("clock"));
        std::fs::create_dir_all(&dir)?;
        let clock = Self {
            file: dir.join("offset"),
            dir,
            offset: 0,
        };
        clock.write()?;
        Ok(clock)
    }

    /// The environment that puts a process on this clock.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", library().display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            // Read the file at every call: a step shows at once.
            ("FAKETIME_NO_CACHE", "1".into()),
            // Timers and elapsed times stay real, as under a real clock step.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }

    /// Steps the clock by `seconds` (negative: back).
    pub fn step(&mut self, seconds: i64) -> Result<()> {
        self.offset += seconds;
        self.write()
    }

    /// Seconds the clock is ahead of the real one.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The clock's time now, UNIX seconds.
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.offset
    }

    fn write(&self) -> Result<()> {
        // Replaced whole: a reader never sees a half-written offset.
        let tmp = self.dir.join("offset.new");
        std::fs::write(&tmp, format!("{:+}\n", self.offset))?;
        std::fs::rename(&tmp, &self.file).context("step the fake clock")
    }
}

impl Drop for FakeClock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
