//! The routing table: every service's match, versions and release compiled from a validated
//! configuration, the index that finds a request's service, and the decision itself.
//!
//! A table is immutable while requests use it (the proxy shares it behind an `ArcSwap` and
//! swaps in a new one on reload); only the rollout controller changes a weight, on its own copy.

use std::collections::HashMap;
use std::sync::Arc;

use graylane_config::{Config, CountryDb, KeySpec, Release, Service, Weight};
use http::Method;

use crate::bucket::{BUCKETS, Bucketer, bucket_of};
use crate::decision::{Decision, KeyUsed, Reason};
use crate::describe::describe;
use crate::flags::{FlagError, Flags};
use crate::matcher::{LiveSegment, Matcher, Members};
use crate::request::{RequestView, with_ip_text};
use crate::routing::{Routing, Share};
use crate::sticky::{CookieKeys, Signer, StickyValue};

/// The compiled form of a [`Config`]'s services, ready to route requests.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    services: Box<[CompiledService]>,
    index: ServiceIndex,
    /// The `geoip:` database, for [`RoutingTable::geoip_country`].
    geoip: Option<Arc<CountryDb>>,
    /// The feature flags, compiled with the same segments; shared by every copy of the table.
    flags: Arc<Flags>,
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
    bucket_by_trusted_only: bool,
    bucketer: Bucketer,
    salt: Box<str>,
    sticky_cookie: Option<Box<str>>,
    /// Signs and verifies the sticky cookie; `None` until keys are set (see
    /// [`RoutingTable::set_cookie_keys`]) or when the release is not sticky.
    signer: Option<Signer>,
}

/// How many cookies of the sticky name are tried: a more specific path's cookie of the same
/// name may come first, and an attacker's long list must not cost a MAC each.
const STICKY_TRIES: usize = 4;

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
    /// [`RoutingTable::compile_with`]. Sticky cookies need keys: until
    /// [`RoutingTable::set_cookie_keys`] a sticky release routes as one without the cookie.
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
        RoutingTable {
            services,
            index,
            geoip: config.geoip.as_ref().map(|g| Arc::clone(&g.countries)),
            flags: Arc::new(Flags::compile(config, &segments)),
        }
    }

    /// The country the `geoip:` database gives for `req`'s client (the address
    /// [`RequestView::geo_ip`] names), as `country` rules see it; `None` without a database or
    /// when it has no answer (the rules then read their header).
    pub fn geoip_country(&self, req: &RequestView<'_>) -> Option<&str> {
        req.country_from(self.geoip.as_deref()?)
    }

    /// The service and version for `req`; `None` when no service matches (the proxy answers
    /// 404). Allocates nothing.
    ///
    /// For a service with a release the checks run in this order, first hit wins: a trusted
    /// lane naming one of its versions, the force rules, then weight bucketing. The bucket is
    /// the `bucket_by` key's when the request has it (a header, cookie or query value), else
    /// the signed sticky cookie's, else the client IP's when that is the key; a request with
    /// none of these gets the client IP's bucket, or on a sticky release a random one that
    /// [`Decision::pin`] asks the proxy to pin with a cookie.
    pub fn decide(&self, req: &RequestView<'_>) -> Option<Decision> {
        let service = self.index.find(&self.services, req)?;
        let Chosen {
            version,
            reason,
            pin,
            unit,
        } = self.services[service].choose(req);
        Some(Decision {
            service,
            version,
            reason,
            pin,
            unit,
        })
    }

    /// Signs and verifies sticky cookies with `keys` from now on (the first signs).
    pub fn set_cookie_keys(&mut self, keys: &CookieKeys) {
        for svc in self.services.iter_mut() {
            if let Some(r) = svc.release.as_mut()
                && r.sticky_cookie.is_some()
            {
                r.signer = Some(Signer::new(keys, &svc.name, &r.salt));
            }
        }
    }

    /// The signed sticky cookie value that pins `bucket` for service `service`; `None` when its
    /// release is not sticky or the table has no keys.
    pub fn sticky_value(&self, service: usize, bucket: u32) -> Option<StickyValue> {
        Some(self.release(service)?.signer.as_ref()?.sign(bucket))
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
                mirror: Weight::ZERO,
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
        Some(rel.version_at(rel.bucketer.bucket(key.as_bytes())))
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
            Reason::Sticky { bucket, weight } => {
                let cookie = release
                    .and_then(|r| r.sticky_cookie.as_deref())
                    .unwrap_or("(sticky cookie)");
                let rule = range_text(release, bucket, weight);
                format!(
                    "signed sticky cookie {cookie} carries bucket {bucket} of {BUCKETS}{}; \
                     it is {rule} → {version}",
                    missing_key(release, req)
                )
            }
            Reason::Bucket {
                bucket,
                weight,
                key,
            } => {
                let rule = range_text(release, bucket, weight);
                let spec = release.map_or_else(
                    || "the bucket_by key".to_string(),
                    |r| r.bucket_by.to_string(),
                );
                let pinned = if decision.pin.is_some() {
                    "; the response's sticky cookie pins this bucket"
                } else {
                    ""
                };
                match key {
                    KeyUsed::Configured => format!(
                        "bucket {bucket} of {BUCKETS} on {spec} is {rule} → {version}{pinned}"
                    ),
                    KeyUsed::FallbackIp => format!(
                        "{}; bucketed on the client IP {} instead: \
                         bucket {bucket} {rule} → {version}{pinned}",
                        missing_key(release, req).trim_start_matches(" and "),
                        req.ip()
                    ),
                    KeyUsed::Random => format!(
                        "{} and no valid sticky cookie; drew the random bucket {bucket} of \
                         {BUCKETS}, {rule} → {version}{pinned}",
                        missing_key(release, req).trim_start_matches(" and "),
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

    /// The names of the services with a release, in file order.
    pub(crate) fn released_services(&self) -> impl Iterator<Item = &str> {
        self.services
            .iter()
            .filter(|s| s.release.is_some())
            .map(|s| &*s.name)
    }

    /// The feature flags of the configuration this table was compiled from.
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// The version an application's context gets from service `service` (a release read as a
    /// flag): its force rules, then its live split, bucketed on the key `key` gives for the
    /// release's `bucket_by`. No lane and no sticky cookie: a context has neither.
    pub(crate) fn decide_context(
        &self,
        service: usize,
        req: &RequestView<'_>,
        key: impl FnOnce(&KeySpec) -> Option<Vec<u8>>,
    ) -> Result<Decision, FlagError> {
        let svc = self.services.get(service).ok_or(FlagError::NotFound)?;
        let decided = |version, reason, unit| Decision {
            service,
            version,
            reason,
            pin: None,
            unit,
        };
        let Some(rel) = &svc.release else {
            return Ok(decided(svc.default_version, Reason::NoRelease, 0));
        };
        if let Some(to) = rel.routing.force_to
            && let Some(rule) = rel.force.iter().position(|m| m.matches(req))
        {
            return Ok(decided(to, Reason::Forced { rule }, 0));
        }
        let key = key(&rel.bucket_by).ok_or(FlagError::TargetingKeyMissing)?;
        let hash = rel.bucketer.hash(&key);
        let bucket = bucket_of(hash);
        let weight = rel
            .routing
            .shares
            .first()
            .map_or(Weight::ZERO, |s| s.weight);
        let reason = Reason::Bucket {
            bucket,
            weight,
            key: KeyUsed::Configured,
        };
        Ok(decided(rel.version_at(bucket), reason, hash))
    }
}

/// What [`CompiledService::choose`] decided for a request.
struct Chosen {
    version: usize,
    reason: Reason,
    pin: Option<u32>,
    unit: u64,
}

impl Chosen {
    /// A decision that bucketing had no part in: no cookie to pin, no unit to count.
    fn unbucketed(version: usize, reason: Reason) -> Chosen {
        Chosen {
            version,
            reason,
            pin: None,
            unit: 0,
        }
    }
}

/// A bucket (from a cookie or a random draw) spread over 64 bits as a unit: distinct buckets
/// stay distinct and none is 0, the "no unit" value.
fn spread(bucket: u32) -> u64 {
    (u64::from(bucket) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
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

    /// The version, why, the bucket a sticky cookie should pin, and the user's unit.
    fn choose(&self, req: &RequestView<'_>) -> Chosen {
        if let Some(v) = req
            .trusted_lane
            .and_then(|lane| self.version_index(lane.as_bytes()))
        {
            return Chosen::unbucketed(v, Reason::Lane);
        }
        let Some(rel) = &self.release else {
            return Chosen::unbucketed(self.default_version, Reason::NoRelease);
        };
        if let Some(to) = rel.routing.force_to
            && let Some(rule) = rel.force.iter().position(|m| m.matches(req))
        {
            return Chosen::unbucketed(to, Reason::Forced { rule });
        }
        let weight = rel
            .routing
            .shares
            .first()
            .map_or(Weight::ZERO, |s| s.weight);
        let cookie = rel.signer.as_ref().and_then(|signer| {
            let name = rel.sticky_cookie.as_deref()?;
            req.cookie_values(name)
                .take(STICKY_TRIES)
                .find_map(|v| signer.verify(v))
        });
        // A user id (header, cookie or query value) beats the cookie, so a user gets the same
        // version in every browser, as events attributed by that id assume; the client IP does
        // not: keeping a client whose address changes on its bucket is what the cookie is for.
        let user_key = match rel.bucket_by {
            KeySpec::ClientIp => None,
            _ if rel.bucket_by_trusted_only && !req.trusted => None,
            _ => req.with_key(&rel.bucket_by, |k| rel.bucketer.hash(k)),
        };
        let ip_hash = || with_ip_text(req.ip(), |k| rel.bucketer.hash(k));
        let (hash, key) = match (user_key, cookie) {
            (Some(h), _) => (h, KeyUsed::Configured),
            (None, Some(b)) => {
                return Chosen {
                    version: rel.version_at(b),
                    reason: Reason::Sticky { bucket: b, weight },
                    pin: None,
                    unit: spread(b),
                };
            }
            (None, None) if rel.bucket_by == KeySpec::ClientIp => (ip_hash(), KeyUsed::Configured),
            (None, None) if rel.signer.is_some() => (spread(req.random % BUCKETS), KeyUsed::Random),
            (None, None) => (ip_hash(), KeyUsed::FallbackIp),
        };
        let bucket = match key {
            KeyUsed::Random => req.random % BUCKETS,
            _ => bucket_of(hash),
        };
        let pin = (rel.signer.is_some() && cookie != Some(bucket)).then_some(bucket);
        Chosen {
            version: rel.version_at(bucket),
            reason: Reason::Bucket {
                bucket,
                weight,
                key,
            },
            pin,
            unit: hash,
        }
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
                .map(|f| Matcher::compile(f, segments, config.geoip.as_ref().map(|g| &g.countries)))
                .collect(),
            force_text: r
                .force
                .iter()
                .map(|f| describe(f, config).into_boxed_str())
                .collect(),
            bucket_by: r.bucket_by.clone(),
            bucket_by_trusted_only: r.bucket_by_trusted_only,
            bucketer: Bucketer::new(&s.name, &r.salt),
            salt: r.salt.as_str().into(),
            sticky_cookie: r.sticky.as_ref().map(|st| st.cookie.as_str().into()),
            signer: None,
        }
    }

    /// The version bucket `bucket` falls in under the current split.
    fn version_at(&self, bucket: u32) -> usize {
        self.ranges
            .iter()
            .find(|(end, _)| bucket < *end)
            .map_or(self.baseline, |&(_, v)| v)
    }
}

/// Where `bucket` falls, in words: a canary reads best as bucket-vs-weight, other splits as
/// the range hit.
fn range_text(release: Option<&CompiledRelease>, bucket: u32, weight: Weight) -> String {
    let threshold = weight.milli_percent();
    let cmp = if bucket < threshold { "<" } else { "≥" };
    match release.filter(|r| r.ranges.len() != 2) {
        None => format!("{cmp} {threshold} (weight {weight})"),
        Some(r) => {
            let mut start = 0;
            for &(end, _) in r.ranges.iter() {
                if bucket >= start && bucket < end {
                    return format!(
                        "in [{start}, {end}) ({} of the traffic)",
                        Weight::from_milli_percent(end - start)
                    );
                }
                start = end;
            }
            String::from("outside every share")
        }
    }
}

/// ` and no header:x-user-id in the request` (or why the one it has does not count); empty
/// when the key is the client IP, which every request has.
fn missing_key(release: Option<&CompiledRelease>, req: &RequestView<'_>) -> String {
    match release {
        Some(r) if r.bucket_by == KeySpec::ClientIp => String::new(),
        Some(r) if r.bucket_by_trusted_only && !req.trusted => format!(
            " and {} counts only from a trusted hop, which this client is not",
            r.bucket_by
        ),
        Some(r) => format!(" and no {} in the request", r.bucket_by),
        None => " and no bucket_by key in the request".to_string(),
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
