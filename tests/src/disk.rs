//! A small real file system to fill up: a tmpfs of a given size on a new temporary directory,
//! unmounted when dropped. For the state directory under a full disk.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result};

pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`64m`), mode 0700.
    pub fn mount(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .with_context(|| format!("mount a {size} tmpfs"))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    pub fn fill(&self) -> Result<()> {
        let mut f = std::fs::File::create(self.path().join("filler"))?;
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last block may have fit in part: fill to the last byte.
        while f.write_all(&[0]).is_ok() {}
        Ok(())
    }

    /// Removes what [`SmallDisk::fill`] wrote.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.path().join("filler")).context("remove the filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}
