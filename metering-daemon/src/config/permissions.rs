//! Who may change what the daemon trusts. The config and price files decide caps, states and
//! money, so a file every local user may write is refused (anyone could lift a cap or block an
//! EIP), and one its group may write is warned about. A secret (the billing store's password,
//! the API's token and TLS key) that every local user may read or write is refused.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

/// What a file's permission bits allow that they should not.
#[derive(Debug, PartialEq, Eq)]
pub enum Exposure {
    Fine,
    /// Logged (or printed) and used.
    Warn(String),
    /// Not used: the command or the daemon stops with this.
    Refuse(String),
}

/// The permission bits of `path`, when it can be read (a missing file is reported by whoever
/// reads it).
pub fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// A config or price file with mode `mode`.
pub fn settings_file(path: &Path, mode: u32) -> Exposure {
    if mode & 0o002 != 0 {
        Exposure::Refuse(format!(
            "{} is writable by every local user (mode {mode:04o}): anyone could change caps, states or prices; run `chmod o-w {}`",
            path.display(),
            path.display()
        ))
    } else if mode & 0o020 != 0 {
        Exposure::Warn(format!(
            "{} is writable by its group (mode {mode:04o}): every member can change caps, states or prices",
            path.display()
        ))
    } else {
        Exposure::Fine
    }
}

/// A file holding a secret, with mode `mode`.
pub fn secret_file(path: &Path, mode: u32) -> Exposure {
    if mode & 0o006 != 0 {
        Exposure::Refuse(format!(
            "{} holds a secret and every local user may read or change it (mode {mode:04o}); run `chmod o-rw {}`",
            path.display(),
            path.display()
        ))
    } else {
        Exposure::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_writable_settings_are_refused_and_group_writable_ones_warned() {
        let p = Path::new("/etc/eip-meter.toml");
        assert!(matches!(settings_file(p, 0o666), Exposure::Refuse(m) if m.contains("0666")));
        assert!(matches!(settings_file(p, 0o664), Exposure::Warn(_)));
        assert_eq!(settings_file(p, 0o644), Exposure::Fine);
        assert_eq!(settings_file(p, 0o600), Exposure::Fine);
    }

    #[test]
    fn a_secret_others_may_read_is_refused() {
        let p = Path::new("/etc/eip-meter/store-password");
        assert!(matches!(secret_file(p, 0o604), Exposure::Refuse(_)));
        assert!(matches!(secret_file(p, 0o602), Exposure::Refuse(_)));
        assert_eq!(secret_file(p, 0o640), Exposure::Fine);
        assert_eq!(secret_file(p, 0o600), Exposure::Fine);
    }
}
