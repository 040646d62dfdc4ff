//! The outcome of routing one request: which service, which version, and the reason, small and
//! `Copy` so the proxy can log it, label metrics with it and hand it back to
//! [`RoutingTable::explain`](crate::RoutingTable::explain).

use graylane_config::Weight;

/// Where a request goes: indices into `config.services` and that service's `versions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into `config.services` of the service that takes the request.
    pub service: usize,
    /// Index into that service's `versions` of the version the request goes to.
    pub version: usize,
    /// Why that version was chosen.
    pub reason: Reason,
    /// The bucket the response's sticky cookie should carry: set for a bucketed decision on a
    /// sticky release whose request had no valid cookie with that bucket.
    pub pin: Option<u32>,
    /// For a bucketed or sticky request, one value per user, for counting an experiment's
    /// distinct units: the 64-bit hash of its bucketing key (the bucket is this modulo
    /// 100 000), or for a user known only by a cookie's or a random bucket, that bucket spread
    /// over 64 bits. 0 otherwise.
    pub unit: u64,
}

/// Why a version was chosen, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The service has no release, so it gets its `default_version`.
    NoRelease,
    /// A trusted hop's `x-graylane-lane` named a version of this service.
    Lane,
    /// Force rule `release.force[rule]` matched (the first matching one is reported).
    Forced {
        /// Index into the release's `force` list of the first rule that matched.
        rule: usize,
    },
    /// The signed sticky cookie's bucket, against the current weights (the candidate iff
    /// `bucket < weight.milli_percent()`).
    Sticky {
        /// The bucket from the cookie, 0 to 99 999.
        bucket: u32,
        /// The first share's weight (a canary's candidate's): the threshold the bucket was
        /// compared with.
        weight: Weight,
    },
    /// Hash bucketing: the candidate iff `bucket < weight.milli_percent()`.
    Bucket {
        /// The bucket of the request's key, 0 to 99 999.
        bucket: u32,
        /// The first share's weight (a canary's candidate's): the threshold the bucket was
        /// compared with.
        weight: Weight,
        /// Which key the bucket came from.
        key: KeyUsed,
    },
}

/// Which key the bucket was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    /// The release's `bucket_by` key.
    Configured,
    /// The `bucket_by` key was missing (or empty) in the request, so the client IP was used.
    FallbackIp,
    /// The `bucket_by` key was missing and the release is sticky: a random bucket, which the
    /// response's cookie then pins.
    Random,
}

impl Reason {
    /// Every value [`Reason::label`] can take, in [`Reason::label_index`] order.
    pub const LABELS: [&'static str; 6] = [
        "no_release",
        "lane",
        "forced",
        "sticky",
        "bucket",
        "fallback_key",
    ];

    /// A short, fixed label for metrics: `no_release`, `lane`, `forced`, `sticky`, `bucket`, or
    /// `fallback_key` for a bucket that is not the configured key's because the request lacked
    /// it (the client IP's, or a random one on a sticky release).
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.label_index()]
    }

    /// The position of this reason's label in [`Reason::LABELS`], so per-reason counters can be
    /// a plain array.
    pub fn label_index(&self) -> usize {
        match self {
            Reason::NoRelease => 0,
            Reason::Lane => 1,
            Reason::Forced { .. } => 2,
            Reason::Sticky { .. } => 3,
            Reason::Bucket {
                key: KeyUsed::Configured,
                ..
            } => 4,
            Reason::Bucket {
                key: KeyUsed::FallbackIp | KeyUsed::Random,
                ..
            } => 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_metric_vocabulary() {
        let bucket = |key| Reason::Bucket {
            bucket: 1,
            weight: Weight::ZERO,
            key,
        };
        assert_eq!(Reason::NoRelease.label(), "no_release");
        assert_eq!(Reason::Lane.label(), "lane");
        assert_eq!(Reason::Forced { rule: 3 }.label(), "forced");
        let sticky = Reason::Sticky {
            bucket: 1,
            weight: Weight::ZERO,
        };
        assert_eq!(sticky.label(), "sticky");
        assert_eq!(bucket(KeyUsed::Configured).label(), "bucket");
        assert_eq!(bucket(KeyUsed::FallbackIp).label(), "fallback_key");
        assert_eq!(bucket(KeyUsed::Random).label(), "fallback_key");
    }
}
