//! One `GET /api/v1/flags/snapshot` from the admin listener (plain HTTP/1.1, a connection per
//! poll: a poll every few seconds gains nothing from keeping one open).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The snapshot's path under the admin URL.
pub(crate) const SNAPSHOT_PATH: &str = "/api/v1/flags/snapshot";

/// The largest snapshot read; a configuration is kilobytes, a segment list maybe megabytes.
const MAX_BODY: usize = 64 << 20;

/// What the admin API answered.
pub(crate) enum Fetched {
    /// `304`: the snapshot with the tag sent is still current.
    NotModified,
    /// `200`: a snapshot and its tag.
    Snapshot { body: Bytes, etag: Option<String> },
}

/// `GET` the snapshot from `uri` (the admin URL with [`SNAPSHOT_PATH`]) within `timeout`.
pub(crate) async fn fetch(
    uri: &Uri,
    token: Option<&str>,
    etag: Option<&str>,
    timeout: Duration,
) -> Result<Fetched, String> {
    match tokio::time::timeout(timeout, exchange(uri, token, etag)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn exchange(uri: &Uri, token: Option<&str>, etag: Option<&str>) -> Result<Fetched, String> {
    let authority = uri
        .authority()
        .ok_or("the admin URL has no host and port")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host().trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    tokio::spawn(connection);
    let mut req = Request::get(uri.clone())
        .header(header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let headers = req.headers_mut();
    if let Some(token) = token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not valid in a header")?;
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(header::IF_NONE_MATCH, tag);
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    let etag = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the snapshot: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(format!("the admin API answered {status}: {text}"));
    }
    Ok(Fetched::Snapshot { body, etag })
}
