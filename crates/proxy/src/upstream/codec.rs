//! HTTP/1.1 heads on the wire: the request writer ([`encode_head`] for the head, then
//! [`write_request`] with the body, chunked where its length is unknown) and the response head
//! parser with its framing decision ([`parse_head`]), which also drops the response's
//! hop-by-hop fields (`hop_by_hop.rs`). The pool (`pool.rs`) drives both over a connection;
//! the parser works on a byte buffer alone, which is how the fuzz targets (`fuzzing.rs`) reach
//! it. The body after a chunked head is decoded by `chunked.rs`.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderName, HeaderValue, SERVER};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::ExchangeError;
use crate::forward::{Forwarding, GRAYLANE_PREFIX};
use crate::hop_by_hop::{self, ConnectionOption, HopByHop};

/// Most headers a response head may have (Envoy's default is 100).
const MAX_HEADERS: usize = 100;
/// A request buffer larger than this is not kept with a pooled connection.
const HEAD_BUFFER_KEEP: usize = 16 * 1024;

/// Writes the head and the body. Each body frame is appended to the head buffer and the
/// buffer is written once the body ends or has nothing more ready, so a whole body (the usual
/// API request) goes out with its head in a single system call, while a body that trickles in
/// is still forwarded frame by frame.
pub(super) async fn write_request<W, B>(
    out: &mut W,
    head: &mut Vec<u8>,
    framing: RequestFraming,
    body: &mut B,
) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use std::io::Write as _;
    let chunked = framing == RequestFraming::Chunked;
    if framing != RequestFraming::Empty {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| io::Error::other(format!("reading the client's body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                write!(head, "{:x}\r\n", data.len())?;
            }
            head.extend_from_slice(&data);
            if chunked {
                head.extend_from_slice(b"\r\n");
            }
            if !body.is_end_stream() {
                out.write_all(head).await?;
                head.clear();
            }
        }
        if chunked {
            head.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out.write_all(head).await?;
    // A large body must not keep its buffer alive for as long as the connection is pooled.
    if head.capacity() > HEAD_BUFFER_KEEP {
        *head = Vec::with_capacity(512);
    }
    Ok(())
}

/// How the request body goes out, as the request head announced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    Empty,
    Length,
    Chunked,
}

/// Writes the request line and headers. The URI is sent in origin form whatever form the
/// client used (HTTP/2 clients send an absolute URI), with the normalised path when there is
/// one. The framing is the gateway's own, from the body it is about to send: a known length
/// goes as `Content-Length`, an unknown one chunked; none of the client's framing headers is
/// copied (see `forward.rs`).
pub(super) fn encode_head(
    parts: &http::request::Parts,
    forwarding: &Forwarding<'_>,
    has_body: bool,
    exact_length: Option<u64>,
    out: &mut Vec<u8>,
) -> RequestFraming {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    match forwarding.path {
        Some(path) => {
            out.extend_from_slice(path.as_bytes());
            if let Some(query) = parts.uri.query() {
                out.push(b'?');
                out.extend_from_slice(query.as_bytes());
            }
        }
        None => {
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            out.extend_from_slice(target.as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let client_framed_length = forwarding.write_headers(&parts.uri, &parts.headers, out);
    let framing = if !has_body {
        // An empty body the client framed with a length keeps `Content-Length: 0`, which some
        // upstreams require on a POST.
        if client_framed_length {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty
    } else if let Some(n) = exact_length {
        out.extend_from_slice(b"content-length: ");
        push_decimal(out, n);
        out.extend_from_slice(b"\r\n");
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// `n` in decimal, without the formatting machinery (every request with a body writes one).
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// How the response body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// A final response head.
pub(crate) struct Head {
    pub(crate) parts: http::response::Parts,
    pub(crate) framing: ResponseFraming,
    /// The connection may carry another request once this response's body is read.
    pub(crate) keep_alive: bool,
}

/// What [`parse_head`] found at the front of the buffer.
pub(crate) enum Parsed {
    Final(Head),
    /// A 1xx head was consumed; a final one follows.
    Informational,
    Partial,
}

/// Byte ranges of one header's name and value within a response head.
#[derive(Clone, Copy)]
pub(crate) struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses one response head off the front of `buf`, consuming it when complete. Header values
/// share the head's buffer rather than being copied. The header slots are left uninitialised
/// and the spans live in a reused vector: zeroing a hundred slots per response would cost more
/// than parsing a typical head.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    spans: &mut Vec<HeaderSpan>,
) -> Result<Parsed, ExchangeError> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => {
            return Err(ExchangeError::Protocol(format!(
                "invalid response head: {e}"
            )));
        }
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::Protocol(format!("invalid status code {code}")))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Protocol(
                "protocol upgrades are not supported".into(),
            ));
        }
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let http10 = resp.version == Some(0);
    let base = buf.as_ptr() as usize;
    spans.clear();
    spans.extend(resp.headers.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        HeaderSpan {
            name: (name, name + h.name.len()),
            value: (value, value + h.value.len()),
        }
    }));
    let head = buf.split_to(len).freeze();
    // One slot more than the upstream sent: the proxy stamps its version header on the way out.
    let mut headers = HeaderMap::with_capacity(spans.len() + 1);
    let mut keep_alive = !http10;
    let mut framing = Framing::default();
    // Whether the upstream's `Connection` header nominates a field besides `close` and
    // `keep-alive`: rare, so only then are the fields looked at again.
    let mut nominated = false;
    for span in spans.iter() {
        let raw_name = &head[span.name.0..span.name.1];
        let raw_value = &head[span.value.0..span.value.1];
        // The hop-by-hop fields (RFC 9110 §7.6.1) describe this connection, not the response:
        // they are read here and never reach the client.
        let name = match Field::of(raw_name) {
            Field::HopByHop(HopByHop::Connection) => {
                for option in hop_by_hop::connection_options(raw_value) {
                    match option {
                        ConnectionOption::Close => keep_alive = false,
                        ConnectionOption::KeepAlive => keep_alive |= http10,
                        ConnectionOption::Field(_) => nominated = true,
                    }
                }
                continue;
            }
            Field::HopByHop(HopByHop::TransferEncoding) => {
                framing.last_transfer_coding = raw_value.rsplit(|&b| b == b',').next();
                continue;
            }
            Field::HopByHop(HopByHop::Other) => continue,
            Field::ContentLength => {
                framing.add_length(raw_value);
                CONTENT_LENGTH
            }
            Field::Known(name) => name,
            // graylane stamps its own (`X-Graylane-Version`, `-Fallback`); an upstream's would
            // tell the client something graylane did not decide.
            Field::Other
                if raw_name
                    .get(..GRAYLANE_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(GRAYLANE_PREFIX.as_bytes())) =>
            {
                continue;
            }
            Field::Other => HeaderName::from_bytes(raw_name).map_err(|_| {
                ExchangeError::Protocol("invalid header name in the response".into())
            })?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| {
                ExchangeError::Protocol(format!("invalid value of response header {name}"))
            })?;
        headers.append(name, value);
    }
    if nominated {
        remove_nominated(&head, spans, &mut headers);
    }
    let framing = framing.decide(method, status)?;
    if framing == ResponseFraming::Chunked && headers.contains_key(CONTENT_LENGTH) {
        // Both framings at once is a smuggling vector: trust the chunking, drop the length,
        // and do not reuse the connection (RFC 9112 §6.3).
        headers.remove(CONTENT_LENGTH);
        keep_alive = false;
    }
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(Parsed::Final(Head {
        parts,
        framing,
        keep_alive,
    }))
}

/// Drops the fields the head's `Connection` headers nominate (RFC 9110 §7.6.1). The header may
/// come after the fields it names, so this runs once all of them are in `headers`.
fn remove_nominated(head: &Bytes, spans: &[HeaderSpan], headers: &mut HeaderMap) {
    for span in spans {
        let raw_name = &head[span.name.0..span.name.1];
        if hop_by_hop::of_raw(raw_name) != Some(HopByHop::Connection) {
            continue;
        }
        for option in hop_by_hop::connection_options(&head[span.value.0..span.value.1]) {
            // A token is ASCII; looking it up as `&str` lower-cases it on the stack.
            if let ConnectionOption::Field(name) = option
                && let Ok(name) = std::str::from_utf8(name)
            {
                headers.remove(name);
            }
        }
    }
}

/// What a response header name means to the exchange, told from its raw bytes without building
/// a `HeaderName` for the fields that are read here or dropped.
enum Field {
    /// Read here (`Connection`, `Transfer-Encoding`) or dropped.
    HopByHop(HopByHop),
    ContentLength,
    /// A name nearly every response carries, without the general lookup.
    Known(HeaderName),
    Other,
}

impl Field {
    /// One dispatch on the length for the common end-to-end names and the hop-by-hop list
    /// together: as two (the list's own `hop_by_hop::of_raw` after these) it cost ~350
    /// instructions a response (bench/instructions). The hop-by-hop arms are
    /// `hop_by_hop.rs`'s list, which a test below holds this to.
    #[inline]
    fn of(name: &[u8]) -> Field {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if is(b"te") => Field::HopByHop(HopByHop::Other),
            4 if is(b"date") => Field::Known(DATE),
            6 if is(b"server") => Field::Known(SERVER),
            7 if is(b"trailer") || is(b"upgrade") => Field::HopByHop(HopByHop::Other),
            10 if is(b"connection") => Field::HopByHop(HopByHop::Connection),
            10 if is(b"keep-alive") => Field::HopByHop(HopByHop::Other),
            12 if is(b"content-type") => Field::Known(CONTENT_TYPE),
            14 if is(b"content-length") => Field::ContentLength,
            16 if is(b"proxy-connection") => Field::HopByHop(HopByHop::Other),
            17 if is(b"transfer-encoding") => Field::HopByHop(HopByHop::TransferEncoding),
            19 if is(b"proxy-authorization") => Field::HopByHop(HopByHop::Other),
            _ => Field::Other,
        }
    }
}

/// The framing fields of a response head, gathered while its headers are read. A bad
/// `Content-Length` matters only when it frames the body: not under `Transfer-Encoding`, not
/// for a response that has no body.
#[derive(Default)]
struct Framing<'a> {
    /// The last transfer coding of the last `Transfer-Encoding` field.
    last_transfer_coding: Option<&'a [u8]>,
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl Framing<'_> {
    /// A `Content-Length` field: a number, or a list of the same number (RFC 9112 §6.3).
    fn add_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .and_then(|t| t.parse::<u64>().ok());
            match n {
                None => self.bad_length = Some("invalid Content-Length in the response"),
                Some(n) if self.length.is_some_and(|l| l != n) => {
                    self.bad_length = Some("conflicting Content-Length values in the response");
                }
                Some(n) => self.length = Some(n),
            }
        }
    }

    fn decide(
        &self,
        method: &Method,
        status: StatusCode,
    ) -> Result<ResponseFraming, ExchangeError> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(ResponseFraming::Empty);
        }
        if let Some(last) = self.last_transfer_coding {
            return Ok(if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                ResponseFraming::Chunked
            } else {
                ResponseFraming::UntilClose
            });
        }
        if let Some(why) = self.bad_length {
            return Err(ExchangeError::Protocol(why.into()));
        }
        Ok(self
            .length
            .map_or(ResponseFraming::UntilClose, ResponseFraming::Length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn the_response_dispatch_reads_exactly_the_hop_by_hop_list() {
        for name in hop_by_hop::NAMES {
            for spelling in [name.to_string(), name.to_ascii_uppercase()] {
                let raw = spelling.as_bytes();
                let hop = hop_by_hop::of_raw(raw).expect("on the list");
                assert!(
                    matches!(Field::of(raw), Field::HopByHop(h) if h == hop),
                    "{spelling}"
                );
            }
        }
        for name in [
            "date",
            "server",
            "content-type",
            "content-length",
            "x-te",
            "trailers",
        ] {
            assert!(
                !matches!(Field::of(name.as_bytes()), Field::HopByHop(_)),
                "{name}"
            );
        }
    }

    fn parse(text: &[u8], method: &Method) -> (Head, BytesMut) {
        let mut buf = BytesMut::from(text);
        loop {
            match parse_head(&mut buf, method, &mut Vec::new()) {
                Ok(Parsed::Final(head)) => return (head, buf),
                Ok(Parsed::Informational) => continue,
                Ok(Parsed::Partial) => panic!("partial"),
                Err(_) => panic!("error"),
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, rest) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&rest[..], b"hello");

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);

        let (h, _) = parse(b"HTTP/1.1 204 No Content\r\n\r\n", &Method::GET);
        assert_eq!(h.framing, ResponseFraming::Empty);

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);

        let (h, _) = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.keep_alive, "TE and CL together must not be reused");
        assert!(!h.parts.headers.contains_key(CONTENT_LENGTH));

        let (h, _) = parse(
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            &Method::GET,
        );
        assert!(!h.keep_alive);
    }

    #[test]
    fn hop_by_hop_fields_are_read_and_not_passed_on() {
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 08:00:00 GMT\r\n\
              Content-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nX-End: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.keep_alive);
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["server", "date", "content-type", "x-end"]);
        assert_eq!(h.parts.headers["content-type"], "text/plain");

        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nConnection: Close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(3));
        assert!(!h.keep_alive);
        assert_eq!(h.parts.headers["content-length"], "3, 3");
    }

    #[test]
    fn conflicting_lengths_are_rejected() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, &Method::GET, &mut Vec::new()),
            Err(ExchangeError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, &Method::GET, &mut Vec::new()),
            Err(ExchangeError::Protocol(_))
        ));
        // Where the length frames nothing, a bad one is no error (RFC 9112 §6.3).
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.parts.headers.contains_key("content-length"));
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(h.framing, ResponseFraming::Empty);
    }

    #[test]
    fn a_connection_header_cannot_nominate_the_framing_or_the_gateways_fields() {
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, Via, TRACEPARENT, x-hop\r\n\
              Content-Length: 2\r\nVia: 1.1 origin\r\ntraceparent: t\r\nX-Hop: 1\r\n\
              Connection: x-later, x-graylane-version\r\nX-Later: 2\r\n\r\nok",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Length(2));
        assert!(h.keep_alive);
        let names: Vec<&str> = h.parts.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "via", "traceparent"]);

        // Both framings at once stay a reason to close, whatever `Connection` says.
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\ncontent-length: 3\r\n\
              transfer-encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(!h.keep_alive);
        assert!(!h.parts.headers.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn request_head_is_origin_form_and_frames_the_body() {
        let req = Request::post("http://example.test/a/b?c=d")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let forwarding = Forwarding {
            lane: &HeaderValue::from_static("stable"),
            forwarded_for: &HeaderValue::from_static("127.0.0.1"),
            tls: false,
            path: None,
            underscores: graylane_config::UnderscoreHeaders::Drop,
            trusted: false,
            mirror: false,
            trace: None,
        };
        assert_eq!(
            encode_head(&parts, &forwarding, true, None, &mut out),
            RequestFraming::Chunked
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("POST /a/b?c=d HTTP/1.1\r\nx-a: 1\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{text}"
        );
        for n in [1, 9, 10, 1234, 18_446_744_073_709_551_615] {
            let mut out = Vec::new();
            encode_head(&parts, &forwarding, true, Some(n), &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.ends_with(&format!("content-length: {n}\r\n\r\n")),
                "{text}"
            );
        }
    }
}
