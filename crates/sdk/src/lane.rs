//! The lane a request is on: the `x-graylane-lane` header graylane sends every upstream (the
//! version it routed the request to), and `x-graylane-version` when a hop sets it. Kept in the
//! request's extensions and, for the handler's duration, in a task-local, so outbound calls
//! made while handling the request carry it on without the handler passing it along.

use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};

/// `x-graylane-lane`: the version graylane routed the request to. Sent back to graylane on an
/// outbound call from a listener's `trusted_hops`, it keeps that call on the same version of
/// every service that has one of that name.
pub static LANE_HEADER: HeaderName = HeaderName::from_static("x-graylane-lane");

/// `x-graylane-version`: the version that answered (graylane stamps it on responses); read
/// from a request when a hop in front of the service sets it.
pub static VERSION_HEADER: HeaderName = HeaderName::from_static("x-graylane-version");

/// The longest lane or version read from a header: version names are short tokens, and a
/// header of kilobytes is not one.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: Lane;
}

/// A request's lane and version, as the inbound headers gave them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lane {
    lane: Option<HeaderValue>,
    version: Option<HeaderValue>,
}

impl Lane {
    /// The lane and version `headers` carry. A value that is not a version name (letters,
    /// digits, `-`, `_`, `.`, at most 128 bytes) counts as absent: it could not name a
    /// version, and it must not travel on.
    pub fn from_headers(headers: &HeaderMap) -> Lane {
        let read = |name: &HeaderName| {
            let mut values = headers.get_all(name).iter();
            let value = values.next()?;
            // Two values are two claims; neither is believed.
            (values.next().is_none() && is_version_name(value.as_bytes())).then(|| value.clone())
        };
        Lane {
            lane: read(&LANE_HEADER),
            version: read(&VERSION_HEADER),
        }
    }

    /// A lane naming `version`; `None` when it is not a version name.
    pub fn named(version: &str) -> Option<Lane> {
        is_version_name(version.as_bytes()).then(|| Lane {
            lane: HeaderValue::from_str(version).ok(),
            version: None,
        })
    }

    /// The lane (`x-graylane-lane`), if the request had one.
    pub fn lane(&self) -> Option<&str> {
        self.lane.as_ref().and_then(|v| v.to_str().ok())
    }

    /// The version (`x-graylane-version`), if the request had one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_ref().and_then(|v| v.to_str().ok())
    }

    /// Whether the request had neither.
    pub fn is_empty(&self) -> bool {
        self.lane.is_none() && self.version.is_none()
    }

    /// The lane of the request being handled by this task: set by [`crate::LaneLayer`] for the
    /// handler's duration, or by [`Lane::scope`].
    pub fn current() -> Option<Lane> {
        CURRENT.try_with(Lane::clone).ok()
    }

    /// Runs `future` with this lane as [`Lane::current`]: for work a handler spawns onto
    /// another task, which does not inherit the handler's.
    pub fn scope<F: Future>(self, future: F) -> tokio::task::futures::TaskLocalFuture<Lane, F> {
        CURRENT.scope(self, future)
    }

    /// Calls `f` with this lane as [`Lane::current`].
    pub(crate) fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// Sets `x-graylane-lane` on an outbound request's `headers`, unless they already have one
    /// (the caller chose). Does nothing without a lane.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(lane) = &self.lane
            && !headers.contains_key(&LANE_HEADER)
        {
            headers.insert(LANE_HEADER.clone(), lane.clone());
        }
    }
}

/// Letters, digits, `-`, `_` and `.`, 1 to 128 bytes: what a version's name may be.
fn is_version_name(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_lane_and_version_are_read_from_their_headers() {
        let lane = Lane::from_headers(&headers(&[
            ("x-graylane-lane", b"canary"),
            ("X-Graylane-Version", b"v2.1"),
        ]));
        assert_eq!(lane.lane(), Some("canary"));
        assert_eq!(lane.version(), Some("v2.1"));
    }

    #[test]
    fn a_value_that_cannot_be_a_version_name_is_not_believed() {
        let long = vec![b'a'; MAX_LEN + 1];
        for bad in [&b""[..], b"can ary", b"canary\xff", b"a,b", &long] {
            let lane = Lane::from_headers(&headers(&[("x-graylane-lane", bad)]));
            assert_eq!(lane.lane(), None, "{bad:?}");
        }
        let twice = headers(&[
            ("x-graylane-lane", b"canary"),
            ("x-graylane-lane", b"stable"),
        ]);
        assert!(Lane::from_headers(&twice).is_empty());
        assert_eq!(Lane::named("no way"), None);
    }

    #[test]
    fn apply_keeps_a_lane_the_caller_set() {
        let mut out = headers(&[("x-graylane-lane", b"stable")]);
        Lane::named("canary").unwrap().apply(&mut out);
        assert_eq!(out["x-graylane-lane"], "stable");
        let mut out = HeaderMap::new();
        Lane::named("canary").unwrap().apply(&mut out);
        assert_eq!(out["x-graylane-lane"], "canary");
        Lane::default().apply(&mut HeaderMap::new());
    }
}
