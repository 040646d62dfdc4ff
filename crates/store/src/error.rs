use std::path::PathBuf;

/// Why a store operation failed. Every message names the file and says what an operator can do
/// about it, because these end up as the one line `graylane serve` prints before it exits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory or the database file cannot be created or opened (permissions, a
    /// path component that is a file, a read-only filesystem).
    #[error(
        "cannot open the store at {}: {cause}; check that the directory can be created and that this user may read and write it (or pass another --data-dir)",
        path.display()
    )]
    Open {
        /// The directory or file that could not be opened.
        path: PathBuf,
        /// What the operating system said (in the message, not as the error's source, so it is
        /// printed once).
        cause: std::io::Error,
    },

    /// The file is not a graylane store or fails redb's integrity checks. It is left untouched:
    /// resetting it would throw away history that may still be recovered from a backup.
    #[error(
        "refusing to start: {} is not a usable graylane store ({detail}); it was left untouched: restore it from a backup, or move it away to start with an empty store",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// Another process (or another store in this one) has the database open; two writers would
    /// each believe they own the releases.
    #[error(
        "{} is already in use by another graylane process; stop that process, or give this one another --data-dir",
        path.display()
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// The file was written with a store layout this build does not know, most likely by a
    /// newer graylane; reading it as if it were known could misread or damage it.
    #[error(
        "refusing to start: {} has store schema version {found}, but this graylane reads version {expected}; run a graylane release that reads version {found}, or move the file away to start with an empty store",
        path.display()
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version recorded in the file.
        found: u64,
        /// The version this build reads and writes.
        expected: u64,
    },

    /// Reading or writing the database file failed at the operating-system level.
    #[error(
        "I/O error on {} while {context}: {cause}; check the disk (free space, errors in the kernel log) and retry",
        path.display()
    )]
    Io {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        context: String,
        /// What the operating system said (in the message, not as the error's source, so it is
        /// printed once).
        cause: std::io::Error,
    },

    /// The storage engine failed in some other way than I/O or a damaged file.
    #[error(
        "storage error on {} while {context}: {cause}; retry, and restart graylane if it persists",
        path.display()
    )]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What the store was doing.
        context: String,
        /// The engine's error.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored value did not deserialize: the file passed its checksums, so it was written by
    /// an incompatible build rather than damaged on disk.
    #[error(
        "cannot decode the value at {key} in table `{table}` of {}: {detail}; the file was written by an incompatible graylane: run the release that wrote it, or move the file away to start with an empty store",
        path.display()
    )]
    Decode {
        /// The database file.
        path: PathBuf,
        /// The table holding the value.
        table: &'static str,
        /// The value's key, as `(env, n)` or `(env, service)`.
        key: String,
        /// What the decoder said.
        detail: String,
    },
}
