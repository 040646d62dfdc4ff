//! Protocol upgrades (WebSocket, or any HTTP/1.1 `Upgrade`): a request that asks for one is
//! routed, limited and stamped like any other, then leaves the request path here. Its
//! handshake goes to the chosen version's endpoint on a new connection
//! (`upstream/upgrade.rs`); a `101` is passed back and a tunnel copies bytes both ways until
//! either side closes, any other answer is passed back as usual and nothing is upgraded.
//!
//! What counts as asking: an HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` that
//! lists only protocol tokens. `Upgrade` without `Connection: upgrade` is an ordinary request
//! (its `Upgrade` dropped as any hop-by-hop field). An upgrade to HTTP/2 (`h2c`, `h2`,
//! `HTTP/2`) is never passed on: it is the known way to smuggle requests past a proxy's rules,
//! so such a request goes on as an ordinary one without it, as Envoy does. An upgrade request
//! with a body is refused (`400`): where the body ends and the new protocol begins would be
//! the upstream's guess. HTTP/2's extended CONNECT (RFC 8441) is not offered: the HTTP/2
//! server does not announce it, so WebSocket clients use HTTP/1.1.
//!
//! The handshake is one request for the version: counted with its status (`101` included),
//! and its failure (connect error, timeout, a `5xx`) feeds the version's breaker. What happens
//! on the tunnel after the `101` is not a request: never an error, never a breaker's failure.
//! Open tunnels are `graylane_upgraded_connections`; the client connection's task waits for
//! its tunnel (`server.rs`), so a drain gives tunnels the drain timeout like any connection.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::attempts::{forwarding, note_failure};
use super::balance::{pick_endpoint, pick_usable_endpoint};
use super::respond::{self, Exchanged, Forwarded, Timing, X_GRAYLANE_VERSION};
use super::{ConnInfo, Worker};
use crate::body::ProxyBody;
use crate::clock::nanos_at;
use crate::guards::AttemptOutcome;
use crate::hop_by_hop::{self, ConnectionOption};
use crate::metrics::RouteStats;
use crate::snapshot::ServiceRoute;
use crate::upstream::{Handshake, Switched, UpstreamErrorKind};

/// Whether the request may be asking for an upgrade: hyper marks an HTTP/1.1 request with an
/// `Upgrade` field (or a `CONNECT`) with an [`OnUpgrade`]. Every other request has no
/// extensions, so this is one pointer test; [`wanted`] reads the head only past it.
#[inline]
pub(super) fn maybe<B>(req: &Request<B>) -> bool {
    req.extensions().get::<OnUpgrade>().is_some()
}

/// The protocols the request asks to switch to, as they go upstream; `None` when it is an
/// ordinary request after all (see the module's doc).
#[cold]
pub(super) fn wanted<B>(req: &Request<B>) -> Option<HeaderValue> {
    let headers = req.headers();
    let asks = headers.get_all(header::CONNECTION).iter().any(|value| {
        hop_by_hop::connection_options(value.as_bytes())
            .any(|o| matches!(o, ConnectionOption::Field(f) if f.eq_ignore_ascii_case(b"upgrade")))
    });
    // A `CONNECT` asks for a tunnel to the host it names: a forward proxy's business, not an
    // upgrade; it goes on as it would without one.
    if req.version() != http::Version::HTTP_11 || req.method() == http::Method::CONNECT || !asks {
        return None;
    }
    let mut list = Vec::new();
    for value in headers.get_all(header::UPGRADE) {
        for protocol in value.as_bytes().split(|&b| b == b',') {
            let protocol = protocol.trim_ascii();
            if protocol.is_empty() {
                continue;
            }
            if !is_protocol(protocol) || is_http2(protocol) {
                return None;
            }
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(protocol);
        }
    }
    if list.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(Bytes::from(list)).ok()
}

/// A protocol of `Upgrade` (RFC 9110 §7.8): a token, optionally `/` and a version token.
fn is_protocol(p: &[u8]) -> bool {
    let is_token = |t: &[u8]| {
        !t.is_empty()
            && t.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    match p.iter().position(|&b| b == b'/') {
        Some(slash) => is_token(&p[..slash]) && is_token(&p[slash + 1..]),
        None => is_token(p),
    }
}

/// An upgrade to HTTP/2 by any name (`h2c`, `h2`, `HTTP/2`, `HTTP/2.0`).
fn is_http2(p: &[u8]) -> bool {
    let (name, version) = match p.iter().position(|&b| b == b'/') {
        Some(slash) => (&p[..slash], &p[slash + 1..]),
        None => (p, &b""[..]),
    };
    name.eq_ignore_ascii_case(b"h2c")
        || name.eq_ignore_ascii_case(b"h2")
        || (name.eq_ignore_ascii_case(b"http") && version.first() == Some(&b'2'))
}

/// The tunnel of a client connection that switched protocols, for its connection's task to
/// wait on: that task holds the connection's place in the listener's limit and in the drain
/// until the tunnel ends.
#[derive(Default)]
pub(crate) struct Tunnel(Cell<Option<JoinHandle<()>>>);

impl Tunnel {
    /// Waits until the connection's tunnel, if it has one, has ended.
    pub(crate) async fn finished(&self) {
        if let Some(tunnel) = self.0.take() {
            let _ = tunnel.await;
        }
    }
}

/// What the upgrade needs of the request path's state, routed and limited already.
pub(super) struct Upgrade<'a> {
    pub(super) worker: &'a Worker,
    pub(super) conn: &'a ConnInfo,
    pub(super) service: &'a ServiceRoute,
    pub(super) version: usize,
    pub(super) forward_path: Option<&'a str>,
    pub(super) started: Instant,
    pub(super) sticky_cookie: Option<HeaderValue>,
}

impl Upgrade<'_> {
    /// Sends the handshake to the version and answers the client: the `101` (then the tunnel
    /// runs on its own), or whatever else the upstream or graylane answered.
    pub(super) async fn forward(
        self,
        req: Request<Incoming>,
        protocols: HeaderValue,
    ) -> Response<ProxyBody> {
        let service = self.service;
        let version = &service.versions[self.version];
        let stats = &version.stats;
        if !req.body().is_end_stream() {
            stats.record_response(self.worker.id, 400, self.started.elapsed());
            return respond::refuse(
                StatusCode::BAD_REQUEST,
                "an upgrade request cannot carry a body",
                "send the upgrade request without a body",
            );
        }
        // The tunnel is raw bytes on a plain TCP connection; an h2c:// or https:// version
        // would need TLS or HTTP/2's extended CONNECT upstream, which graylane does not speak.
        if version.upstream.is_some() {
            stats.record_response(self.worker.id, 501, self.started.elapsed());
            return respond::refuse(
                StatusCode::NOT_IMPLEMENTED,
                "protocol upgrades reach http:// endpoints only",
                "this version's endpoints are h2c:// or https://",
            );
        }
        let ctl = &version.guards;
        let now = nanos_at(Instant::now());
        let token = match ctl.breaker.as_ref().map(|b| b.try_call(now)) {
            Some(Err(open)) => {
                return self.shed(
                    "the version's circuit breaker is open",
                    Some(open.retry_after),
                );
            }
            Some(Ok(token)) => Some(token),
            None => None,
        };
        let endpoint = if ctl.is_active() {
            pick_usable_endpoint(service, version, now, true)
        } else {
            (!version.endpoints.is_empty()).then(|| pick_endpoint(service, version))
        };
        let Some(endpoint) = endpoint else {
            drop(token);
            return self.shed("no endpoint of the version is healthy", None);
        };
        let addr = version.endpoints[endpoint].addr;
        let (mut parts, _) = req.into_parts();
        let on_upgrade = parts.extensions.remove::<OnUpgrade>();
        let forwarding = forwarding(self.conn, version, self.forward_path);
        let mut deadline = self
            .worker
            .deadlines
            .at(self.started.checked_add(service.request_timeout));
        let sent = Instant::now();
        let result = tokio::select! {
            biased;
            answer = self.worker.pool.upgrade(addr, service.connect_timeout, &parts, &protocols, &forwarding) => Some(answer),
            () = &mut deadline => None,
        };
        if let Some(t) = token {
            let outcome = match &result {
                Some(Ok(Handshake::Switched(_))) => AttemptOutcome::Status(101),
                Some(Ok(Handshake::Refused(resp))) => {
                    AttemptOutcome::Status(resp.status().as_u16())
                }
                Some(Err(e)) => AttemptOutcome::Error(e.kind),
                None => AttemptOutcome::Error(UpstreamErrorKind::Timeout),
            };
            let ended = Instant::now();
            let outcome = graylane_traffic::breaker::Outcome {
                failed: outcome.fails(&ctl.failure_on),
                duration: ended - sent,
            };
            t.record(nanos_at(ended), outcome);
        }
        let result = match result {
            Some(Ok(Handshake::Switched(switched))) => {
                return self.switched(switched, on_upgrade);
            }
            Some(Ok(Handshake::Refused(resp))) => Some(Ok(resp.map(ProxyBody::Upstream))),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        };
        if !matches!(result, Some(Ok(_))) {
            note_failure(&result, self.worker, service, version, addr);
        }
        let exchanged = Forwarded::Exchanged(Exchanged {
            version: self.version,
            fell_back: false,
            result,
            timing: Timing::Only,
        });
        respond::forwarded(
            exchanged,
            service,
            self.worker,
            self.started,
            self.sticky_cookie,
        )
    }

    /// The upstream switched: the `101` for the client, stamped and counted, and the tunnel
    /// started, to run once hyper has written the `101` and handed over the connection.
    fn switched(self, switched: Switched, on_upgrade: Option<OnUpgrade>) -> Response<ProxyBody> {
        let version = &self.service.versions[self.version];
        version
            .stats
            .record_served(self.worker.id, 101, self.started.elapsed());
        let Switched {
            mut head,
            stream,
            early,
        } = switched;
        head.headers
            .insert(X_GRAYLANE_VERSION.clone(), version.version_header.clone());
        if let Some(cookie) = self.sticky_cookie {
            head.headers.append(header::SET_COOKIE, cookie);
        }
        if let Some(on_upgrade) = on_upgrade {
            let open = OpenTunnel::new(Arc::clone(&version.stats));
            let task = tokio::task::spawn_local(tunnel(on_upgrade, stream, early, open));
            self.conn.tunnel.0.set(Some(task));
        }
        Response::from_parts(head, ProxyBody::local(Bytes::new()))
    }

    /// The `503` of an upgrade the version cannot take now (no fallback: a handshake is not
    /// sent to another version than the one routed to).
    fn shed(&self, what: &str, retry_after: Option<std::time::Duration>) -> Response<ProxyBody> {
        let version = &self.service.versions[self.version];
        version
            .stats
            .record_response(self.worker.id, 503, self.started.elapsed());
        respond::shed(what, retry_after, self.service, version)
    }
}

/// Counts one open tunnel of a version in `graylane_upgraded_connections`, until dropped.
struct OpenTunnel(Arc<RouteStats>);

impl OpenTunnel {
    fn new(stats: Arc<RouteStats>) -> OpenTunnel {
        stats.upgraded_opened();
        OpenTunnel(stats)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.upgraded_closed();
    }
}

/// Copies bytes between the client's upgraded connection and the upstream's until either side
/// closes or fails; then what that side sent is written out and both connections close, as
/// nginx ends an upgraded connection (a half-closed tunnel whose other side never closes would
/// stay open, and counted, for good). The upstream's first bytes, read with its `101`, go to
/// the client first.
async fn tunnel(on_upgrade: OnUpgrade, mut upstream: TcpStream, early: Bytes, open: OpenTunnel) {
    let client = match on_upgrade.await {
        Ok(client) => client,
        Err(e) => {
            tracing::debug!("the client connection was not upgraded: {e}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    if !early.is_empty()
        && let Err(e) = client.write_all(&early).await
    {
        tracing::debug!("upgraded connection: writing to the client: {e}");
        return;
    }
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let up = async {
        let copied = tokio::io::copy(&mut from_client, &mut to_upstream).await;
        let _ = to_upstream.shutdown().await;
        copied
    };
    let down = async {
        let copied = tokio::io::copy(&mut from_upstream, &mut to_client).await;
        let _ = to_client.shutdown().await;
        copied
    };
    let ended = tokio::select! {
        copied = up => copied,
        copied = down => copied,
    };
    // Debug, not warn: either side may end a tunnel abruptly, and that is no one's fault.
    if let Err(e) = ended {
        tracing::debug!("upgraded connection ended: {e}");
    }
    drop(open);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted_of(headers: &[(&str, &str)]) -> Option<String> {
        let mut req = Request::get("/").body(()).unwrap();
        for (name, value) in headers {
            req.headers_mut().append(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        wanted(&req).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn an_upgrade_is_asked_for_with_connection_upgrade_and_protocol_tokens() {
        let ws = Some("websocket".to_string());
        assert_eq!(
            wanted_of(&[("connection", "Upgrade"), ("upgrade", "websocket")]),
            ws
        );
        assert_eq!(
            wanted_of(&[
                ("connection", "keep-alive, UPGRADE"),
                ("upgrade", " websocket ")
            ]),
            ws
        );
        assert_eq!(
            wanted_of(&[
                ("connection", "upgrade"),
                ("upgrade", "foo/1, bar"),
                ("upgrade", "baz")
            ]),
            Some("foo/1, bar, baz".to_string())
        );
        assert_eq!(
            wanted_of(&[("upgrade", "websocket")]),
            None,
            "no Connection: upgrade"
        );
        assert_eq!(
            wanted_of(&[("connection", "close"), ("upgrade", "websocket")]),
            None
        );
        assert_eq!(wanted_of(&[("connection", "upgrade")]), None, "no protocol");
        let mut connect = Request::connect("app.example:443").body(()).unwrap();
        connect
            .headers_mut()
            .insert("connection", HeaderValue::from_static("upgrade"));
        connect
            .headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(wanted(&connect), None, "CONNECT");
        assert_eq!(
            wanted_of(&[("connection", "upgrade"), ("upgrade", "web socket")]),
            None,
            "not a token"
        );
    }

    #[test]
    fn an_upgrade_to_http2_by_any_name_is_never_asked_for() {
        for h2 in ["h2c", "H2C", "h2", "HTTP/2", "http/2.0", "websocket, h2c"] {
            assert_eq!(
                wanted_of(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", h2)]),
                None,
                "{h2}"
            );
        }
        assert_eq!(
            wanted_of(&[("connection", "upgrade"), ("upgrade", "HTTP/1.1")]),
            Some("HTTP/1.1".to_string())
        );
    }
}
