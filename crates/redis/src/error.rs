use std::time::Duration;

/// Why a Redis integration could not be set up, or why one Redis call failed.
///
/// Every variant that comes from a call names the server (`url`, with any password replaced by
/// `***`) so that a log line says which Redis misbehaved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL is not a usable `redis://` URL; reported when the client is created.
    #[error("redis url `{url}` is not valid: {reason}")]
    InvalidUrl {
        /// The server's URL, its password replaced by `***`.
        url: String,
        /// Why the URL cannot be used.
        reason: String,
    },
    /// A setting is out of range; `field` names it as the configuration does.
    #[error("`{field}` {reason}")]
    InvalidConfig {
        /// The setting, named as the configuration names it.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The client was created outside a Tokio runtime, which it needs for its connection.
    #[error("redis url `{url}`: a Redis client must be created inside a Tokio runtime")]
    NoRuntime {
        /// The server's URL, its password replaced by `***`.
        url: String,
    },
    /// No reply within the time allowed for this call.
    #[error("redis `{url}`: no reply within {timeout:?}")]
    Timeout {
        /// The server's URL, its password replaced by `***`.
        url: String,
        /// The time the call was allowed.
        timeout: Duration,
    },
    /// A recent call failed to reach the server; calls fail at once, without a round trip, until
    /// the next probe (see [`ClientOptions::error_backoff`](crate::ClientOptions)).
    #[error("redis `{url}`: unavailable after a recent connection error or timeout; retrying soon")]
    Unavailable {
        /// The server's URL, its password replaced by `***`.
        url: String,
    },
    /// The connection failed or the server answered with an error.
    #[error("redis `{url}`: {source}")]
    Redis {
        /// The server's URL, its password replaced by `***`.
        url: String,
        /// The Redis client's error.
        #[source]
        source: redis::RedisError,
    },
    /// The server answered with something this crate did not expect (e.g. a script reply of the
    /// wrong shape).
    #[error("redis `{url}`: unexpected reply to {command}: {detail}")]
    UnexpectedReply {
        /// The server's URL, its password replaced by `***`.
        url: String,
        /// The command or script that got the reply.
        command: &'static str,
        /// What the reply was, and what was expected.
        detail: String,
    },
}
