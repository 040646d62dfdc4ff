//! The outcome of routing one request: which service, which version, and the reason, small and
//! `Copy` so the proxy can log it, label metrics with it and hand it back to
//! [`RoutingTable::explain`](crate::RoutingTable::explain).

use graylane_config::Weight;

/// Where a request goes: indices into `config.services` and that service's `versions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub service: usize,
    pub version: usize,
    pub reason: Reason,
    /// For a bucketed request, the 64-bit hash of its bucketing key (the bucket is this modulo
    /// 100 000): one value per user, for counting an experiment's distinct units. 0 otherwise.
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
    Forced { rule: usize },
    /// The sticky cookie named a version that is currently eligible.
    Sticky,
    /// Hash bucketing: the candidate iff `bucket < weight.milli_percent()`.
    Bucket {
        bucket: u32,
        weight: Weight,
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
}

impl Reason {
    /// A short, fixed label for metrics: `no_release`, `lane`, `forced`, `sticky`, `bucket`, or
    /// `fallback_key` for a bucket computed on the client IP because the configured key was
    /// missing.
    /// Every value [`Reason::label`] can take, in [`Reason::label_index`] order.
    pub const LABELS: [&'static str; 6] = [
        "no_release",
        "lane",
        "forced",
        "sticky",
        "bucket",
        "fallback_key",
    ];

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
            Reason::Sticky => 3,
            Reason::Bucket {
                key: KeyUsed::Configured,
                ..
            } => 4,
            Reason::Bucket {
                key: KeyUsed::FallbackIp,
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
        assert_eq!(Reason::Sticky.label(), "sticky");
        assert_eq!(bucket(KeyUsed::Configured).label(), "bucket");
        assert_eq!(bucket(KeyUsed::FallbackIp).label(), "fallback_key");
    }
}
