//! The states and kinds the API names with a fixed word: a release's strategy and state, an
//! analysis decision, a circuit breaker's state, where a revision came from, the cluster mode
//! and a token's role.
//!
//! On the wire each is the plain string (`"rolled_back"`), and the OpenAPI document shows it as
//! a string as before. A word this version does not know (from a newer server) is kept as
//! `Unknown(word)` and written back unchanged, so reading never fails on it and the CLI shows
//! what the server said.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares a wire enum: its variants with their words, `Unknown` for any other word,
/// `as_str`, `Display`, and serde as a plain string.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A word this version does not know, as the server sent it.
            Unknown(String),
        }

        impl $name {
            /// The word on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Unknown(word) => word,
                }
            }

            /// The variant a word names; `Unknown` for any other.
            pub fn from_word(word: &str) -> $name {
                match word {
                    $($text => $name::$variant,)+
                    other => $name::Unknown(other.to_string()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let word = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
                Ok($name::from_word(&word))
            }
        }
    };
}

wire_enum! {
    /// How a release moves traffic.
    Strategy {
        /// Steps of growing weight for the candidate.
        Canary = "canary",
        /// A preview, then one switch.
        BlueGreen = "blue_green",
        /// Fixed shares between variants until a winner is promoted.
        Experiment = "experiment",
    }
}

wire_enum! {
    /// Where a release stands (also the `from` and `to` of a transition).
    ReleaseState {
        /// Moving through its steps.
        Progressing = "progressing",
        /// Held at its step by a command or a manual pause.
        Paused = "paused",
        /// Promoted: the candidate is stable.
        Completed = "completed",
        /// All traffic back to the stable version.
        Aborted = "aborted",
        /// A completed release sent back to the previous stable version.
        RolledBack = "rolled_back",
    }
}

impl ReleaseState {
    /// Whether the release still runs (its pause counts down or waits for a command).
    pub fn is_running(&self) -> bool {
        matches!(self, ReleaseState::Progressing | ReleaseState::Paused)
    }
}

wire_enum! {
    /// What an analysis decided at its latest judgement.
    AnalysisDecision {
        /// Not enough evidence yet; the release goes on as planned.
        Continue = "continue",
        /// Every check passed.
        Promote = "promote",
        /// Held where it is.
        Hold = "hold",
        /// The release is paused.
        Pause = "pause",
        /// A check failed; the release is rolled back.
        Fail = "fail",
    }
}

wire_enum! {
    /// A version's circuit breaker.
    CircuitState {
        /// Requests pass.
        Closed = "closed",
        /// Requests are refused (or sent to the fallback).
        Open = "open",
        /// A few trial requests pass.
        HalfOpen = "half_open",
    }
}

wire_enum! {
    /// How a configuration revision was made.
    RevisionSource {
        /// Read from the configuration file.
        File = "file",
        /// Sent to `PUT /api/v1/config`.
        Api = "api",
        /// An older revision's text applied again.
        Revert = "revert",
    }
}

wire_enum! {
    /// How the answering node runs.
    ClusterMode {
        /// One of several nodes sharing etcd.
        Fleet = "fleet",
        /// One node with its own store.
        Single = "single",
    }
}

wire_enum! {
    /// What a token may do: each role may also do what the ones before it may.
    Role {
        /// Read.
        Viewer = "viewer",
        /// Read and command releases.
        Operator = "operator",
        /// Everything, configuration changes included.
        Admin = "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_its_word_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&ReleaseState::RolledBack).unwrap(),
            "\"rolled_back\""
        );
        assert_eq!(
            serde_json::from_str::<CircuitState>("\"half_open\"").unwrap(),
            CircuitState::HalfOpen
        );
    }
}
