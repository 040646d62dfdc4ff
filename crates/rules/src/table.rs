//! The routing table: every service's match, versions and release compiled from a validated
//! configuration, the index that finds a request's service, and the decision itself.
//!
//! A table is immutable while requests use it (the proxy shares it behind an `ArcSwap` and
//! swaps in a new one on reload); only the rollout controller changes a weight, on its own copy.

use std::collections::HashMap;
use std::sync::Arc;

use graylane_config::{Config, KeySpec, Release, Service, Weight};
use http::Method;

use crate::bucket::{BUCKETS, Bucketer, bucket_of};
use crate::decision::{Decision, KeyUsed, Reason};
use crate::describe::describe;
use crate::matcher::{LiveSegment, Matcher, Members};
use crate::request::{RequestView, with_ip_text};
use crate::routing::{Routing, Share};

/// The compiled form of a [`Config`]'s services, ready to route requests.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    services: Box<[CompiledService]>,
    index: ServiceIndex,
}

#[derive(Debug, Clone)]
struct CompiledService {
    name: Box<str>,
    /// Lower case, as the config stores it.
    host: Option<Box<str>>,
    methods: Box<[Method]>,
    versions: Box<[Box<str>]>,
    default_version: usize,
    release: Option<CompiledRelease>,
}

#[derive(Debug, Clone)]
struct CompiledRelease {
    baseline: usize,
    candidate: usize,
    routing: Routing,
    /// `routing.shares` as bucket ranges: (end, version), ascending; a bucket belongs to the
    /// first range whose end is above it.
    ranges: Box<[(u32, usize)]>,
    force: Box<[Matcher]>,
    /// `force[i]` in words, for explanations.
    force_text: Box<[Box<str>]>,
    bucket_by: KeySpec,
    bucketer: Bucketer,
    sticky_cookie: Option<Box<str>>,
}

/// Finds the service for a request without scanning them all: services grouped by their exact
/// path prefix, probed from the longest prefix length in use down to the shortest.
#[derive(Debug, Clone)]
struct ServiceIndex {
    /// Prefix → services with that prefix, host-specific ones first, then in config order.
    by_prefix: HashMap<Box<str>, Box<[usize]>, foldhash::fast::RandomState>,
    /// Every distinct prefix length, longest first.
    lengths: Box<[usize]>,
}

impl RoutingTable {
    /// Compiles a validated configuration. Each release starts at its first step's weight.
    /// A segment whose members live elsewhere (Redis) is empty here: see
    /// [`RoutingTable::compile_with`].
    pub fn compile(config: &Config) -> RoutingTable {
        RoutingTable::compile_with(config, &|_| None)
    }

    /// Compiles `config` with `live(name)` giving the members of the segments kept current
    /// outside the configuration (a Redis segment's mirror); a segment it has none for uses
    /// the members the configuration lists.
    pub fn compile_with(
        config: &Config,
        live: &dyn Fn(&str) -> Option<Arc<dyn LiveSegment>>,
    ) -> RoutingTable {
        let segments: Vec<Members> = config
            .segments
            .iter()
            .map(|s| match live(&s.name) {
                Some(l) => Members::Live(l),
                None => Members::Fixed(Arc::new(
                    s.members.iter().map(|m| m.as_str().into()).collect(),
                )),
            })
            .collect();
        let services: Box<[CompiledService]> = config
            .services
            .iter()
            .map(|s| CompiledService::compile(s, config, &segments))
            .collect();
        let index = ServiceIndex::build(&config.services);
        RoutingTable { services, index }
    }

    /// The service and version for `req`; `None` when no service matches (the proxy answers
    /// 404). Allocates nothing.
    ///
    /// For a service with a release the checks run in this order, first hit wins: a trusted
    /// lane naming one of its versions, the force rules, the sticky cookie, then weight
    /// bucketing on `bucket_by` (on the client IP when that key is missing or empty).
    pub fn decide(&self, req: &RequestView<'_>) -> Option<Decision> {
        let service = self.index.find(&self.services, req)?;
        let (version, reason, unit) = self.services[service].choose(req);
        Some(Decision {
            service,
            version,
            reason,
            unit,
        })
    }

    /// The candidate's current share; zero for a service without a release.
    pub fn weight(&self, service: usize) -> Weight {
        self.release(service)
            .map_or(Weight::ZERO, |r| r.routing.weight_of(r.candidate))
    }

    /// Gives the candidate `weight` and the baseline the rest, force rules on: a canary step.
    /// Does nothing for a service without a release.
    pub fn set_weight(&mut self, service: usize, weight: Weight) {
        if let Some(r) = self.release(service) {
            let routing = Routing {
                force_to: Some(r.candidate),
                shares: vec![
                    Share {
                        version: r.candidate,
                        weight,
                    },
                    Share {
                        version: r.baseline,
                        weight: Weight::from_milli_percent(
                            Weight::FULL.milli_percent() - weight.milli_percent(),
                        ),
                    },
                ],
            };
            self.set_routing(service, routing);
        }
    }

    /// Replaces the release's traffic split (the rollout controller's lever). Does nothing for
    /// a service without a release.
    pub fn set_routing(&mut self, service: usize, routing: Routing) {
        if let Some(r) = self
            .services
            .get_mut(service)
            .and_then(|s| s.release.as_mut())
        {
            r.ranges = ranges(&routing);
            r.routing = routing;
        }
    }

    /// The index of the service called `name`.
    pub fn service_index(&self, name: &str) -> Option<usize> {
        self.services.iter().position(|s| &*s.name == name)
    }

    /// The version a user whose bucketing key is `key` gets by weight alone — no lane, force
    /// rule or cookie: how a business event posted for that user is attributed to a version
    /// (or an experiment's variant). `None` for a service without a release.
    pub fn assign(&self, service: usize, key: &str) -> Option<usize> {
        let rel = self.release(service)?;
        let bucket = rel.bucketer.bucket(key.as_bytes());
        Some(
            rel.ranges
                .iter()
                .find(|(end, _)| bucket < *end)
                .map_or(rel.baseline, |&(_, v)| v),
        )
    }

    /// The release's traffic split now; `None` for a service without a release.
    pub fn routing(&self, service: usize) -> Option<&Routing> {
        self.release(service).map(|r| &r.routing)
    }

    /// Why `req` got `decision`, in one line for people (`graylane eval`). Force rules are
    /// numbered from 1, so "force rule #1" is `release.force[0]`.
    pub fn explain(&self, req: &RequestView<'_>, decision: &Decision) -> String {
        let Some(svc) = self.services.get(decision.service) else {
            return format!("service #{} is not in this routing table", decision.service);
        };
        let version = svc.version_name(decision.version);
        let release = svc.release.as_ref();
        match decision.reason {
            Reason::NoRelease => format!(
                "service {} has no release → its default version {version}",
                svc.name
            ),
            Reason::Lane => format!(
                "trusted lane {:?} (x-graylane-lane) names a version of {} → {version}",
                req.trusted_lane.unwrap_or(version),
                svc.name
            ),
            Reason::Forced { rule } => {
                let text = release
                    .and_then(|r| r.force_text.get(rule))
                    .map_or("(unknown rule)", |t| t);
                format!("force rule #{} matched: {text} → {version}", rule + 1)
            }
            Reason::Sticky => {
                let cookie = release
                    .and_then(|r| r.sticky_cookie.as_deref())
                    .unwrap_or("(sticky cookie)");
                format!(
                    "sticky cookie {cookie}={version} names a version that is eligible → {version}"
                )
            }
            Reason::Bucket {
                bucket,
                weight,
                key,
            } => {
                let threshold = weight.milli_percent();
                let cmp = if bucket < threshold { "<" } else { "≥" };
                let spec = release.map_or_else(
                    || "the bucket_by key".to_string(),
                    |r| r.bucket_by.to_string(),
                );
                // A canary reads best as bucket-vs-weight; other splits as the range hit.
                let rule = match release.filter(|r| r.ranges.len() != 2) {
                    None => format!("{cmp} {threshold} (weight {weight})"),
                    Some(r) => {
                        let mut start = 0;
                        let mut hit = String::from("outside every share");
                        for &(end, _) in r.ranges.iter() {
                            if bucket >= start && bucket < end {
                                hit = format!(
                                    "in [{start}, {end}) ({} of the traffic)",
                                    Weight::from_milli_percent(end - start)
                                );
                                break;
                            }
                            start = end;
                        }
                        hit
                    }
                };
                match key {
                    KeyUsed::Configured => {
                        format!("bucket {bucket} of {BUCKETS} on {spec} is {rule} → {version}")
                    }
                    KeyUsed::FallbackIp => format!(
                        "no {spec} in the request; bucketed on the client IP {} instead: \
                         bucket {bucket} {rule} → {version}",
                        req.ip()
                    ),
                }
            }
        }
    }

    /// The name of service `service`; `"?"` for an index this table does not have (such as one
    /// from a decision made by an older table).
    pub fn service_name(&self, service: usize) -> &str {
        self.services.get(service).map_or("?", |s| &s.name)
    }

    /// The name of version `version` of service `service`; `"?"` when there is no such version.
    pub fn version_name(&self, service: usize, version: usize) -> &str {
        self.services
            .get(service)
            .map_or("?", |s| s.version_name(version))
    }

    fn release(&self, service: usize) -> Option<&CompiledRelease> {
        self.services.get(service)?.release.as_ref()
    }
}

impl CompiledService {
    fn compile(s: &Service, config: &Config, segments: &[Members]) -> CompiledService {
        CompiledService {
            name: s.name.as_str().into(),
            host: s.matcher.host.as_deref().map(Into::into),
            methods: s.matcher.methods.as_slice().into(),
            versions: s.versions.iter().map(|v| v.name.as_str().into()).collect(),
            default_version: s.default_version,
            release: s
                .release
                .as_ref()
                .map(|r| CompiledRelease::compile(r, s, config, segments)),
        }
    }

    fn accepts(&self, req: &RequestView<'_>) -> bool {
        let host_ok = self.host.as_deref().is_none_or(|want| {
            req.host.is_some_and(|h| {
                // `example.com.` is the same host as `example.com`.
                let h = h.strip_suffix('.').unwrap_or(h);
                h.eq_ignore_ascii_case(want)
            })
        });
        host_ok && (self.methods.is_empty() || self.methods.contains(req.method))
    }

    fn version_index(&self, name: &[u8]) -> Option<usize> {
        self.versions.iter().position(|v| v.as_bytes() == name)
    }

    fn version_name(&self, version: usize) -> &str {
        self.versions.get(version).map_or("?", |v| v)
    }

    /// The version, why, and the unit hash of a bucketed request (0 otherwise).
    fn choose(&self, req: &RequestView<'_>) -> (usize, Reason, u64) {
        if let Some(v) = req
            .trusted_lane
            .and_then(|lane| self.version_index(lane.as_bytes()))
        {
            return (v, Reason::Lane, 0);
        }
        let Some(rel) = &self.release else {
            return (self.default_version, Reason::NoRelease, 0);
        };
        if let Some(to) = rel.routing.force_to
            && let Some(rule) = rel.force.iter().position(|m| m.matches(req))
        {
            return (to, Reason::Forced { rule }, 0);
        }
        if let Some(v) = self.sticky_version(rel, req) {
            return (v, Reason::Sticky, 0);
        }
        let (hash, key) = match req.with_key(&rel.bucket_by, |k| rel.bucketer.hash(k)) {
            Some(h) => (h, KeyUsed::Configured),
            None => (
                with_ip_text(req.ip(), |k| rel.bucketer.hash(k)),
                KeyUsed::FallbackIp,
            ),
        };
        let bucket = bucket_of(hash);
        let version = rel
            .ranges
            .iter()
            .find(|(end, _)| bucket < *end)
            .map_or(rel.baseline, |&(_, v)| v);
        let weight = rel
            .routing
            .shares
            .first()
            .map_or(Weight::ZERO, |s| s.weight);
        (
            version,
            Reason::Bucket {
                bucket,
                weight,
                key,
            },
            hash,
        )
    }

    /// The version the sticky cookie names, if it may still be honoured: while that version
    /// has a share of the traffic. A canary's baseline thus keeps its users until the candidate
    /// has everything, the candidate keeps them while it gets any (zero means it was aborted),
    /// and a completed or switched release moves every user, cookie or not.
    /// Only the first cookie of that name counts; browsers send the most specific one first.
    fn sticky_version(&self, rel: &CompiledRelease, req: &RequestView<'_>) -> Option<usize> {
        let name = rel.sticky_cookie.as_deref()?;
        let value = req.cookie_values(name).next()?;
        let v = self.version_index(value)?;
        rel.ranges
            .iter()
            .scan(0, |start, &(end, version)| {
                let nonempty = end > *start;
                *start = end;
                Some(nonempty && version == v)
            })
            .any(|eligible| eligible)
            .then_some(v)
    }
}

impl CompiledRelease {
    fn compile(r: &Release, s: &Service, config: &Config, segments: &[Members]) -> CompiledRelease {
        let routing = Routing::initial(r);
        CompiledRelease {
            baseline: r.baseline,
            candidate: r.candidate,
            ranges: ranges(&routing),
            routing,
            force: r
                .force
                .iter()
                .map(|f| Matcher::compile(f, segments))
                .collect(),
            force_text: r
                .force
                .iter()
                .map(|f| describe(f, &config.segments).into_boxed_str())
                .collect(),
            bucket_by: r.bucket_by.clone(),
            bucketer: Bucketer::new(&s.name, &r.salt),
            sticky_cookie: r.sticky.as_ref().map(|st| st.cookie.as_str().into()),
        }
    }
}

fn ranges(routing: &Routing) -> Box<[(u32, usize)]> {
    let mut end = 0;
    routing
        .shares
        .iter()
        .map(|s| {
            end += s.weight.milli_percent();
            (end, s.version)
        })
        .collect()
}

impl ServiceIndex {
    fn build(services: &[Service]) -> ServiceIndex {
        let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, s) in services.iter().enumerate() {
            groups
                .entry(s.matcher.path_prefix.as_str())
                .or_default()
                .push(i);
        }
        let mut lengths: Vec<usize> = groups.keys().map(|p| p.len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        let by_prefix = groups
            .into_iter()
            .map(|(prefix, mut ids)| {
                // Stable sort: host-specific services first, config order within each group.
                ids.sort_by_key(|&i| services[i].matcher.host.is_none());
                (prefix.into(), ids.into_boxed_slice())
            })
            .collect();
        ServiceIndex {
            by_prefix,
            lengths: lengths.into_boxed_slice(),
        }
    }

    /// Longest matching prefix first; at equal prefix, host-specific before any-host, then
    /// config order. A longer prefix whose services all reject the host or method falls
    /// through to shorter ones.
    fn find(&self, services: &[CompiledService], req: &RequestView<'_>) -> Option<usize> {
        let path = req.path;
        self.lengths
            .iter()
            .filter_map(|&len| path.get(..len))
            .filter_map(|probe| self.by_prefix.get(probe))
            .find_map(|ids| ids.iter().copied().find(|&i| services[i].accepts(req)))
    }
}
