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

    /// A conditional write found the release changed since the state it was computed from:
    /// another node changed it first. Nothing was written; read it again and retry.
    #[error(
        "release `{service}` was changed on another node while this change was being made; nothing was written: look at its state again and retry"
    )]
    Conflict {
        /// The release's service.
        service: String,
    },

    /// A change only the leader makes (a timed step, an analysis verdict) was attempted by a
    /// node that no longer leads. Nothing was written; the new leader makes it.
    #[error("this node is no longer the fleet's leader; the change was left to the new leader")]
    NotLeader,

    /// The shared store did not answer (down, unreachable, or slower than the timeout). Nothing
    /// is known to have been written; the request can be retried once it is back.
    #[error(
        "the configuration store (etcd at {endpoints}) is unavailable while {context}: {cause}; the gateway keeps serving its last configuration: retry once etcd is back"
    )]
    Unavailable {
        /// The etcd endpoints, as given to `--etcd`.
        endpoints: String,
        /// What the store was doing.
        context: String,
        /// What the client said.
        cause: String,
    },

    /// The shared store holds data this build cannot use: another schema, another environment's
    /// data under this one's keys, or keys graylane did not write. Nothing was changed.
    #[error("refusing to use etcd at {endpoints}: {detail}; nothing was changed")]
    Foreign {
        /// The etcd endpoints, as given to `--etcd`.
        endpoints: String,
        /// What was found, and where.
        detail: String,
    },
}
