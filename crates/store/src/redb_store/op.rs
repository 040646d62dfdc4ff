//! What the store was doing when something failed, and the error that says so: the path, the
//! action and the environment, formatted only when an error happens.

use std::io;
use std::path::Path;

use serde::Serialize;

use crate::StoreError;

/// What the store was doing, for the context of an error; formatted only when one happens.
pub(super) struct Op<'a> {
    path: &'a Path,
    action: &'static str,
    env: Option<&'a str>,
}

impl<'a> Op<'a> {
    pub(super) fn new(path: &'a Path, action: &'static str, env: Option<&'a str>) -> Self {
        Op { path, action, env }
    }

    pub(super) fn context(&self) -> String {
        match self.env {
            Some(env) => format!("{} in environment {env:?}", self.action),
            None => self.action.to_string(),
        }
    }

    pub(super) fn fail(&self, err: redb::Error) -> StoreError {
        let path = self.path.to_path_buf();
        match err {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
                StoreError::Locked { path }
            }
            redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
            redb::Error::UpgradeRequired(version) => StoreError::Corrupt {
                path,
                detail: format!(
                    "it is in redb file format {version}, which needs a manual upgrade"
                ),
            },
            // Every table is created with the schema version, so one that is missing or has
            // other types means the file is not what its version says.
            err @ (redb::Error::TableDoesNotExist(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. }) => StoreError::Corrupt {
                path,
                detail: err.to_string(),
            },
            redb::Error::Io(source) => StoreError::Io {
                path,
                context: self.context(),
                cause: source,
            },
            redb::Error::PreviousIo => StoreError::Io {
                path,
                context: self.context(),
                cause: io::Error::other(
                    "an earlier write failed; the store opens the database again at the next operation",
                ),
            },
            other => StoreError::Storage {
                path,
                context: self.context(),
                cause: Box::new(other),
            },
        }
    }

    /// Like [`Op::fail`], for opening: redb reports a file that is not a database at all, or is
    /// cut short, as an I/O error, which here means damage rather than a failing disk.
    pub(super) fn open_failed(&self, err: redb::Error) -> StoreError {
        match err {
            redb::Error::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ) =>
            {
                StoreError::Corrupt {
                    path: self.path.to_path_buf(),
                    detail: e.to_string(),
                }
            }
            other => self.fail(other),
        }
    }
}

pub(super) trait OrFail<T> {
    fn or_fail(self, op: &Op<'_>) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrFail<T> for Result<T, E> {
    fn or_fail(self, op: &Op<'_>) -> Result<T, StoreError> {
        self.map_err(|e| op.fail(e.into()))
    }
}

pub(super) fn encode(op: &Op<'_>, value: &impl Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Storage {
        path: op.path.to_path_buf(),
        context: format!("encoding a value while {}", op.context()),
        cause: Box::new(e),
    })
}
