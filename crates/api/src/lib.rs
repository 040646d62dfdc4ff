//! The admin API's request and response types (`/api/v1`, docs/admin-api.md), declared once:
//! the controller builds them, the admin server serves them with their OpenAPI schemas, and the
//! CLI reads them, so a renamed field fails to compile rather than silently defaulting.
//!
//! Pure types: serde and utoipa derives, no I/O. The JSON is the wire format; a field's name,
//! its `null`s and its skip rules are part of the API. States are enums ([`states`]) that keep
//! a value they do not know as [`ReleaseState::Unknown`] and the like, so a CLI reading a
//! newer server shows the new value instead of failing.
//!
//! * [`releases`]: a release, the release list and the commands' bodies.
//! * [`analysis`]: analyses, live series, business events and experiment results.
//! * [`config`]: configuration revisions, diffs and the outcome of a change.
//! * [`audit`]: the audit log.
//! * [`cluster`]: the fleet, and who a token is.
//! * [`segments`]: editing a Redis segment's members.
//! * [`eval`]: which version a request would get.
//! * [`ofrep`]: feature flags and releases over the OpenFeature Remote Evaluation Protocol.
//! * [`snapshot`]: the flags and release splits an application evaluates itself.
//! * [`error`]: the body of every failed call.

pub mod analysis;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod error;
pub mod eval;
pub mod ofrep;
pub mod releases;
pub mod segments;
pub mod snapshot;
pub mod states;

pub use analysis::{
    AnalysisView, EventAttribution, EventBatch, EventBody, EventSummary, EventsRecorded,
    ExperimentResults, Point, SeriesView, VariantResult,
};
pub use audit::{AuditList, AuditView};
pub use cluster::{Cluster, ClusterMember, Whoami};
pub use config::{ApplyOutcome, DiffView, RevisionList, RevisionView};
pub use error::ErrorBody;
pub use eval::{EvalAnswer, EvalRequest};
pub use ofrep::{
    OfrepBulk, OfrepBulkItem, OfrepCacheInvalidation, OfrepCapabilities, OfrepConfiguration,
    OfrepError, OfrepEvaluation, OfrepFlagEvaluation, OfrepPolling, OfrepRequest,
};
pub use releases::{
    AdaptiveView, AnalysisBrief, CommandBody, GateView, ReleaseList, ReleaseView, StepView,
    TransitionView, VariantView, WeightBody,
};
pub use segments::{SegmentEdit, SegmentEdited};
pub use snapshot::{FlagSnapshot, ReleaseSplit, SplitShare};
pub use states::{
    AnalysisDecision, CircuitState, ClusterMode, ReleaseState, RevisionSource, Role, Strategy,
};
