//! Where the keys that sign sticky cookies come from: `GRAYLANE_COOKIE_KEYS` (comma-separated,
//! the first signs, all verify) when set, else a key file in the data directory, created with
//! one random key on first start, so a restart keeps every cookie valid.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use graylane_rules::CookieKeys;
use ring::rand::{SecureRandom, SystemRandom};

/// The environment variable that holds the keys.
pub const ENV: &str = "GRAYLANE_COOKIE_KEYS";
/// The key file's name in the data directory.
pub const FILE: &str = "cookie-keys";

/// Why no keys could be had.
#[derive(Debug, thiserror::Error)]
pub enum CookieKeysError {
    /// The keys in [`ENV`] (or freshly generated ones) are not valid cookie keys.
    #[error("{ENV}: {0}")]
    Env(graylane_rules::CookieKeysError),
    /// The data directory's key file holds no valid keys.
    #[error("{}: {source}", path.display())]
    File {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its keys.
        source: graylane_rules::CookieKeysError,
    },
    /// The key file (or the data directory) could not be read, created or written.
    #[error("cannot read or create {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The operating system's random number generator failed, so no key could be made.
    #[error("the system has no randomness to make a cookie key: {0}")]
    Random(String),
}

/// The keys from `env_value` (the value of [`ENV`], if set and not blank), else from
/// `data_dir`'s key file, which is created (mode 0600) with a fresh random key when missing.
pub fn load(env_value: Option<&str>, data_dir: &Path) -> Result<CookieKeys, CookieKeysError> {
    if let Some(text) = env_value.filter(|v| !v.trim().is_empty()) {
        return CookieKeys::parse(text).map_err(CookieKeysError::Env);
    }
    let path = data_dir.join(FILE);
    let io = |source| CookieKeysError::Io {
        path: path.clone(),
        source,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let key = random_key()?;
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            match file.open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{key}\n").as_bytes()).map_err(io)?;
                    f.sync_all().map_err(io)?;
                    key
                }
                // Another gateway on the same data directory made it first: use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path).map_err(io)?
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(e) => return Err(io(e)),
    };
    CookieKeys::parse(&text).map_err(|source| CookieKeysError::File { path, source })
}

/// Keys for one process only (a gateway started without any): cookies it issues stop
/// verifying when it stops.
pub fn ephemeral() -> Result<CookieKeys, CookieKeysError> {
    let key = random_key()?;
    CookieKeys::parse(&key).map_err(CookieKeysError::Env)
}

/// A fresh key: 32 random bytes in hex (what a fleet stores once for all its nodes).
pub fn random_key() -> Result<String, CookieKeysError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|e| CookieKeysError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_once_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load(None, &data).unwrap();
        assert_eq!(first.len(), 1);
        let text = std::fs::read_to_string(data.join(FILE)).unwrap();
        assert_eq!(text.trim().len(), 64, "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        load(None, &data).unwrap();
        assert_eq!(std::fs::read_to_string(data.join(FILE)).unwrap(), text);
    }

    #[test]
    fn the_environment_beats_the_file_and_bad_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let keys = load(
            Some("a-key-of-sixteen-bytes,another-key-0123456"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            !dir.path().join(FILE).exists(),
            "no file when the env sets the keys"
        );
        let err = load(Some("short"), dir.path()).unwrap_err().to_string();
        assert_eq!(
            err,
            "GRAYLANE_COOKIE_KEYS: cookie key #1 is 5 bytes long; a key needs at least 16"
        );
        std::fs::write(dir.path().join(FILE), "tiny\n").unwrap();
        let err = load(Some("  "), dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with("cookie-keys: cookie key #1 is 4 bytes long; a key needs at least 16"),
            "{err}"
        );
    }
}
