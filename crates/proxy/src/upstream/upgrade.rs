//! The upstream side of a protocol upgrade (WebSocket, or any HTTP/1.1 `Upgrade`): one exchange
//! on a new connection, never a pooled one, whose head carries `Connection: upgrade` and the
//! protocols the client asked for. A `101` hands back the raw socket with the bytes the
//! upstream already sent past its head (the new protocol's first ones); any other answer is an
//! ordinary response whose connection closes after its body, never back to the pool.
//!
//! The ordinary response parser (`codec.rs`) treats a `101` as a protocol error, which is what
//! it is for a request that asked for no upgrade; here a `101` head is recognised by its status
//! line and parsed apart, so the request path of every other request is left as it was.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::codec::{self, Parsed, RequestFraming};
use super::pool::{Conn, UpstreamPool};
use super::{ExchangeError, UpstreamError};
use crate::forward::{Forwarding, GRAYLANE_PREFIX};
use crate::hop_by_hop::{self, ConnectionOption, HopByHop};

/// Most headers a `101` head may have, as for any response.
const MAX_HEADERS: usize = 100;

/// How the upstream answered an upgrade request.
pub(crate) enum Handshake {
    /// It switched protocols.
    Switched(Switched),
    /// It answered otherwise: a response like any other, its body still on the wire.
    Refused(Response<UpstreamBody>),
}

/// An upstream connection that switched protocols.
pub(crate) struct Switched {
    /// The `101` as the client gets it: the upstream's end-to-end fields, its `Upgrade` and
    /// `Connection: upgrade`.
    pub(crate) head: http::response::Parts,
    /// The connection, out of any pool for good.
    pub(crate) stream: TcpStream,
    /// What the upstream sent after the `101` head: owed to the client before anything else.
    pub(crate) early: Bytes,
}

impl UpstreamPool {
    /// Sends an upgrade request (no body) to `addr` on a new connection, with
    /// `Connection: upgrade` and `Upgrade: protocols`, and reads the upstream's answer.
    pub(crate) async fn upgrade(
        self: &Rc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
        parts: &http::request::Parts,
        protocols: &HeaderValue,
        forwarding: &Forwarding<'_>,
    ) -> Result<Handshake, UpstreamError> {
        let mut conn = Conn::connect(addr, connect_timeout).await?;
        let head = conn.head_mut();
        codec::encode_head(parts, forwarding, false, None, head);
        // The head ends with its blank line; the two hop-by-hop fields of the upgrade, which
        // `forward.rs` dropped with the client's others, go before it.
        head.truncate(head.len().saturating_sub(2));
        head.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        head.extend_from_slice(protocols.as_bytes());
        head.extend_from_slice(b"\r\n\r\n");
        let mut no_body = http_body_util::Empty::<Bytes>::new();
        conn.write_request(RequestFraming::Empty, &mut no_body)
            .await
            .map_err(|error| {
                ExchangeError::Io {
                    error,
                    received_nothing: true,
                }
                .into_upstream_error(addr)
            })?;
        let mut spans = Vec::new();
        let mut received = false;
        loop {
            if switching(&conn.read) {
                match parse_switch(&mut conn.read, protocols) {
                    Ok(Some(head)) => {
                        let (stream, early) = conn.into_switched();
                        return Ok(Handshake::Switched(Switched {
                            head,
                            stream,
                            early: early.freeze(),
                        }));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(e.into_upstream_error(addr)),
                }
            } else if !conn.read.is_empty() {
                match codec::parse_head(&mut conn.read, &parts.method, &mut spans) {
                    Ok(Parsed::Final(head)) => {
                        let body =
                            UpstreamBody::new(conn, head.framing, false, Rc::clone(self), addr);
                        return Ok(Handshake::Refused(Response::from_parts(head.parts, body)));
                    }
                    Ok(Parsed::Informational) => continue,
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(e.into_upstream_error(addr)),
                }
            }
            let read = conn.read_more().await.map_err(|error| ExchangeError::Io {
                error,
                received_nothing: !received,
            });
            match read {
                Ok(0) => {
                    return Err(ExchangeError::Protocol(
                        "the upstream closed the connection before a complete response head".into(),
                    )
                    .into_upstream_error(addr));
                }
                Ok(_) => received = true,
                Err(e) => return Err(e.into_upstream_error(addr)),
            }
        }
    }
}

/// Whether the head at the front of `buf` is a `101`, from its status line alone.
fn switching(buf: &[u8]) -> bool {
    buf.len() >= 12 && buf.starts_with(b"HTTP/1.") && &buf[8..12] == b" 101"
}

/// Parses a `101` head off the front of `buf`, consuming it when complete (`None` while it is
/// not). The upstream's hop-by-hop fields, the fields its `Connection` nominates and any
/// `X-Graylane-*` are dropped as from any response; its `Upgrade` is kept, and must name only
/// protocols the client `offered` (RFC 9110 §7.8): a switch to anything else is refused.
fn parse_switch(
    buf: &mut BytesMut,
    offered: &HeaderValue,
) -> Result<Option<http::response::Parts>, ExchangeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(ExchangeError::Protocol(format!(
                "invalid response head: {e}"
            )));
        }
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 3);
    let mut upgrade: Option<HeaderValue> = None;
    for h in resp.headers.iter() {
        let raw = h.name.as_bytes();
        match hop_by_hop::of_raw(raw) {
            Some(HopByHop::Other) if raw.eq_ignore_ascii_case(b"upgrade") => {
                if upgrade.is_some() {
                    return Err(ExchangeError::Protocol(
                        "the 101 response has more than one Upgrade field".into(),
                    ));
                }
                upgrade = Some(HeaderValue::from_bytes(h.value).map_err(|_| {
                    ExchangeError::Protocol("invalid Upgrade value in the 101 response".into())
                })?);
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        // A 1xx has no body, so no length (RFC 9110 §8.6); graylane stamps its own fields.
        if raw.eq_ignore_ascii_case(b"content-length")
            || raw
                .get(..GRAYLANE_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(GRAYLANE_PREFIX.as_bytes()))
        {
            continue;
        }
        let name = HeaderName::from_bytes(raw)
            .map_err(|_| ExchangeError::Protocol("invalid header name in the response".into()))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| {
            ExchangeError::Protocol(format!("invalid value of response header {name}"))
        })?;
        headers.append(name, value);
    }
    for h in resp.headers.iter() {
        if hop_by_hop::of_raw(h.name.as_bytes()) != Some(HopByHop::Connection) {
            continue;
        }
        for option in hop_by_hop::connection_options(h.value) {
            if let ConnectionOption::Field(name) = option
                && let Ok(name) = std::str::from_utf8(name)
            {
                headers.remove(name);
            }
        }
    }
    let Some(upgrade) = upgrade else {
        return Err(ExchangeError::Protocol(
            "the 101 response has no Upgrade field".into(),
        ));
    };
    let asked_for =
        |protocol: &[u8]| protocols(offered.as_bytes()).any(|p| p.eq_ignore_ascii_case(protocol));
    let switched_to_offered = {
        let mut switched_to = protocols(upgrade.as_bytes()).peekable();
        switched_to.peek().is_some() && switched_to.all(asked_for)
    };
    if !switched_to_offered {
        return Err(ExchangeError::Protocol(
            "the upstream switched to a protocol the client did not ask for".into(),
        ));
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
    let _ = buf.split_to(len);
    let mut parts = Response::new(()).into_parts().0;
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(Some(parts))
}

/// The protocols an `Upgrade` value lists, without the whitespace and empty elements around
/// them.
fn protocols(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        head: &[u8],
        offered: &'static str,
    ) -> Result<(http::response::Parts, BytesMut), String> {
        let mut buf = BytesMut::from(head);
        match parse_switch(&mut buf, &HeaderValue::from_static(offered)) {
            Ok(Some(parts)) => Ok((parts, buf)),
            Ok(None) => Err("partial".into()),
            Err(ExchangeError::Protocol(why)) => Err(why),
            Err(ExchangeError::Io { error, .. }) => Err(error.to_string()),
        }
    }

    #[test]
    fn a_101_keeps_its_upgrade_and_end_to_end_fields_and_leaves_the_early_bytes() {
        assert!(switching(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(!switching(b"HTTP/1.1 200 OK\r\n"));
        assert!(!switching(b"HTTP/1.1 10"));
        let (parts, rest) = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade, X-Hop\r\n\
              Sec-WebSocket-Accept: abc\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
              X-Graylane-Version: forged\r\nContent-Length: 4\r\n\r\n\x81\x02hi",
            "websocket",
        )
        .unwrap();
        assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(parts.headers["upgrade"], "WebSocket");
        assert_eq!(parts.headers["connection"], "upgrade");
        assert_eq!(parts.headers["sec-websocket-accept"], "abc");
        for dropped in [
            "x-hop",
            "keep-alive",
            "x-graylane-version",
            "content-length",
        ] {
            assert!(!parts.headers.contains_key(dropped), "{dropped}");
        }
        assert_eq!(&rest[..], b"\x81\x02hi");
    }

    #[test]
    fn a_101_to_another_protocol_than_asked_or_without_upgrade_is_refused() {
        let no_upgrade = parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "websocket");
        assert!(no_upgrade.unwrap_err().contains("no Upgrade"));
        let h2c = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
            "websocket",
        );
        assert!(h2c.unwrap_err().contains("did not ask for"));
        let twice = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n\r\n",
            "websocket",
        );
        assert!(twice.unwrap_err().contains("more than one"));
        assert!(
            parse(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo/2\r\n\r\n",
                "websocket, foo/2"
            )
            .is_ok()
        );
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\nUpgr", "websocket").unwrap_err(),
            "partial"
        );
    }
}
