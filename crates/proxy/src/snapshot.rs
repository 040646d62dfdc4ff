//! The routing snapshot: everything a request needs, built once per configuration.
//!
//! A [`Snapshot`] pairs the rule engine's [`RoutingTable`] with what the data plane adds per
//! version: its endpoints, the header values it stamps on requests and responses, and its
//! metric handles. Swapping one `Arc<Snapshot>` is how a reload (or a weight change) takes
//! effect atomically.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use graylane_config::{Config, LoadBalancing};
use graylane_rules::{CookieKeys, LiveSegment, Routing, RoutingTable};
use http::HeaderValue;

use crate::guards::{GuardState, ServiceGuards, VersionGuards};
use crate::metrics::{Metrics, RouteStats};
use crate::upstream::UpstreamTarget;

/// A snapshot as a worker thread hands it to its requests. Cloning the `Rc` is a plain
/// increment; cloning the `Arc` would be an atomic write to a cache line every core shares.
pub type LocalSnapshot = std::rc::Rc<Arc<Snapshot>>;

/// One configuration compiled for the data plane: what every request of its generation is
/// routed and forwarded with. Never changed once built; a new one replaces it.
pub struct Snapshot {
    /// The validated configuration it was built from.
    pub config: Arc<Config>,
    /// The rule engine's compiled routes, with the release weights in effect and the cookie
    /// keys.
    pub table: RoutingTable,
    /// One entry per configured service, in configuration order (the table's service indices).
    pub services: Vec<ServiceRoute>,
    /// Increases with every applied configuration.
    pub generation: u64,
    /// Where requests' access log lines go; `None`: no access log.
    pub(crate) access_log: Option<Arc<crate::access_log::Sink>>,
    /// Where requests' spans go; `None`: no traces.
    pub(crate) tracer: Option<Arc<crate::telemetry::Tracer>>,
}

/// What the data plane needs of one service, beyond the routing decision.
pub struct ServiceRoute {
    /// The service's name.
    pub name: String,
    /// One entry per version, in configuration order (the decisions' version indices).
    pub versions: Vec<VersionRoute>,
    /// Rate limits and retries.
    pub guards: ServiceGuards,
    /// The most connecting to an endpoint may take: the service's `timeouts.connect`, else
    /// `upstream.connect_timeout` (default 1 s); past it the attempt fails with `504`.
    pub connect_timeout: Duration,
    /// The most from the request's arrival to the upstream's response headers may take: the
    /// service's `timeouts.request`, else `upstream.request_timeout` (default 30 s).
    pub request_timeout: Duration,
    /// How an endpoint of a version is chosen: round robin, or least request.
    pub load_balancing: LoadBalancing,
    /// The parts of the release's `Set-Cookie` that do not change per request.
    pub sticky: Option<StickyCookie>,
    /// The release's mirror step in effect; `None` (the rule) copies nothing.
    pub(crate) mirror: Option<Box<crate::handler::mirror::Mirror>>,
}

/// A sticky cookie's fixed parts; its value (the signed bucket) is the rule engine's.
pub struct StickyCookie {
    /// `name=`
    pub name: Box<[u8]>,
    /// `; Path=/prefix; HttpOnly; SameSite=Lax` and `; Max-Age=N` when configured.
    pub attributes: Box<[u8]>,
}

/// What the data plane needs of one version of a service.
pub struct VersionRoute {
    /// The version's name.
    pub name: String,
    /// The version's upstream addresses, in configuration order.
    pub endpoints: Vec<Endpoint>,
    /// `X-Graylane-Version` on responses: the version's name.
    pub version_header: HeaderValue,
    /// `x-graylane-lane` towards the upstream.
    pub lane_header: HeaderValue,
    /// The version's counters; the same ones across snapshots, so they survive reloads.
    pub stats: Arc<RouteStats>,
    /// Round-robin cursor; shared by the workers, touched only when there are several endpoints.
    pub next: AtomicUsize,
    /// Breaker, concurrency limit, fallback, outlier ejection and health of this version.
    pub guards: VersionGuards,
    /// `X-Graylane-Fallback` when this version serves another's traffic.
    pub fallback_header: HeaderValue,
    /// How `h2c://` and `https://` endpoints are reached; `None` for `http://` ones, which
    /// the in-task HTTP/1.1 client serves.
    pub(crate) upstream: Option<Arc<UpstreamTarget>>,
}

/// One upstream address of a version.
pub struct Endpoint {
    /// Where requests are sent.
    pub addr: SocketAddr,
    /// Requests in flight, for least-request balancing.
    pub in_flight: AtomicUsize,
}

impl Snapshot {
    /// Compiles `config`; a release named in `routes` gets that traffic split instead of the
    /// one it starts with (the rollout controller's decisions outlive configuration reloads).
    pub fn build(
        config: Arc<Config>,
        metrics: &Metrics,
        generation: u64,
        routes: &BTreeMap<String, Routing>,
        guard_state: &GuardState,
        cookie_keys: &CookieKeys,
    ) -> Snapshot {
        let mut table = RoutingTable::compile_with(&config, &|name| {
            let segment = config.segments.iter().find(|s| s.name == name)?;
            let mirror = guard_state.mirror_of(segment)?;
            Some(Arc::new(RedisMembers(mirror)) as Arc<dyn LiveSegment>)
        });
        let (service_guards, version_guards) = crate::guards::compile(&config, guard_state);
        let mut service_guards = service_guards.into_iter();
        let mut version_guards = version_guards.into_iter();
        table.set_cookie_keys(cookie_keys);
        for (i, svc) in config.services.iter().enumerate() {
            if let Some(r) = routes.get(&svc.name) {
                table.set_routing(i, r.clone());
            }
        }
        let services = config
            .services
            .iter()
            .map(|svc| {
                let sticky = svc.release.as_ref().and_then(|r| r.sticky.as_ref());
                let mut guards = version_guards.next().unwrap_or_default().into_iter();
                let versions = svc
                    .versions
                    .iter()
                    .map(|v| VersionRoute {
                        name: v.name.clone(),
                        endpoints: v
                            .endpoints
                            .iter()
                            .map(|addr| Endpoint {
                                addr: *addr,
                                in_flight: AtomicUsize::new(0),
                            })
                            .collect(),
                        version_header: token_header(&v.name),
                        lane_header: token_header(&v.name),
                        stats: {
                            let stats = metrics.route(&svc.name, &v.name);
                            // Only an experiment's SRM check needs its units; the tables
                            // cost memory per version and worker.
                            if svc.release.as_ref().is_some_and(|r| {
                                matches!(r.strategy, graylane_config::Strategy::Experiment { .. })
                            }) {
                                stats.count_units();
                            }
                            stats
                        },
                        next: AtomicUsize::new(0),
                        guards: guards.next().unwrap_or_default(),
                        fallback_header: token_header(&v.name),
                        upstream: UpstreamTarget::new(
                            v.protocol,
                            v.tls.as_ref(),
                            &config.upstream,
                            svc.grpc_error_codes,
                        ),
                    })
                    .collect();
                ServiceRoute {
                    name: svc.name.clone(),
                    versions,
                    guards: service_guards.next().unwrap_or_default(),
                    connect_timeout: svc.connect_timeout,
                    request_timeout: svc.request_timeout,
                    load_balancing: svc.load_balancing,
                    mirror: crate::handler::mirror::Mirror::prepare(svc, routes.get(&svc.name)),
                    sticky: sticky.map(|s| {
                        let mut attributes =
                            format!("; Path={}; HttpOnly; SameSite=Lax", svc.matcher.path_prefix);
                        if let Some(age) = s.max_age {
                            attributes.push_str(&format!("; Max-Age={}", age.as_secs()));
                        }
                        StickyCookie {
                            name: format!("{}=", s.cookie).into_bytes().into(),
                            attributes: attributes.into_bytes().into(),
                        }
                    }),
                }
            })
            .collect();
        Snapshot {
            config,
            table,
            services,
            generation,
            access_log: None,
            tracer: None,
        }
    }
}

/// Version names are validated as header-safe tokens, so this never falls back in practice.
fn token_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A Redis segment's local mirror as the rule engine reads it.
struct RedisMembers(Arc<graylane_redis::RedisSegment>);

impl std::fmt::Debug for RedisMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisMembers")
    }
}

impl LiveSegment for RedisMembers {
    fn contains(&self, member: &str) -> bool {
        self.0.contains(member)
    }
}
