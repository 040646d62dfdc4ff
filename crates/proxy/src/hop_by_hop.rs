//! The hop-by-hop header fields (RFC 9110 §7.6.1) and the `Connection` header's parser, for
//! both directions: the client's request on its way to an upstream (`forward.rs`) and the
//! upstream's response on its way back (`upstream/codec.rs`). A field on the list, or one a
//! message's `Connection` header nominates, describes a single connection and never crosses
//! the gateway.
//!
//! A `Connection` header is input from whoever sent the message, so what it may nominate is
//! limited: never a framing field, `Host`, or a field the gateway writes itself (see
//! [`PROTECTED`]). Otherwise `Connection: content-length` strips a request's length while its
//! body is still sent, and the upstream reads that body as the next request on a pooled
//! connection; or it strips `Host`, or the trace context and `Via` the gateway passes on.
//!
//! Everything here works on bytes and allocates nothing: the response side reads field names
//! straight off the wire, in whatever case the upstream wrote them.

use http::header::{GetAll, HeaderName, HeaderValue};

use crate::forward::GRAYLANE_PREFIX;

/// What a hop-by-hop field is to the code that reads a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HopByHop {
    /// `Connection`: its options are read with [`connection_options`].
    Connection,
    /// `Transfer-Encoding`: it frames the message's body.
    TransferEncoding,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`, `Proxy-Authorization`:
    /// dropped unread.
    Other,
}

/// The hop-by-hop fields (RFC 9110 §7.6.1, with the legacy `Keep-Alive` and `Proxy-Connection`,
/// and `Proxy-Authorization`, which is for this proxy). [`classify`] and the response
/// parser's dispatch (`upstream/codec.rs`) are held to this list by tests.
#[cfg(test)]
pub(crate) const NAMES: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

/// The list of hop-by-hop fields, told apart by length first so that a name that is not one
/// (nearly every name) costs one jump; `is` compares `name` with a lower-case candidate.
/// Always inlined: it runs for every header of every message, and inlined into its caller the
/// comparisons with the candidates fold into the caller's own match on the length.
#[inline(always)]
fn classify(name: &[u8], is: impl Fn(&[u8]) -> bool) -> Option<HopByHop> {
    match name.len() {
        2 if is(b"te") => Some(HopByHop::Other),
        7 if is(b"trailer") || is(b"upgrade") => Some(HopByHop::Other),
        10 if is(b"connection") => Some(HopByHop::Connection),
        10 if is(b"keep-alive") => Some(HopByHop::Other),
        16 if is(b"proxy-connection") => Some(HopByHop::Other),
        17 if is(b"transfer-encoding") => Some(HopByHop::TransferEncoding),
        19 if is(b"proxy-authorization") => Some(HopByHop::Other),
        _ => None,
    }
}

/// Which hop-by-hop field a name read off the wire is, in any case; `None` for an end-to-end
/// one.
#[inline(always)]
pub(crate) fn of_raw(name: &[u8]) -> Option<HopByHop> {
    classify(name, |known| name.eq_ignore_ascii_case(known))
}

/// Whether `name` is a hop-by-hop field.
#[inline(always)]
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    // A `HeaderName` is lower case already: a plain comparison does.
    let name = name.as_str().as_bytes();
    classify(name, |known| name == known).is_some()
}

/// Fields a `Connection` header can never nominate: the framing ones, `Host`, and those the
/// gateway writes or passes on itself (besides the `x-graylane-` prefix, see [`is_protected`]).
pub(crate) const PROTECTED: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
    "traceparent",
    "tracestate",
];

/// Whether `name` (any case) is a field a `Connection` header cannot nominate.
fn is_protected(name: &[u8]) -> bool {
    PROTECTED
        .iter()
        .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
        || name
            .get(..GRAYLANE_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(GRAYLANE_PREFIX.as_bytes()))
}

/// One option of a `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionOption<'a> {
    /// `close`: the sender closes the connection after this message.
    Close,
    /// `keep-alive`: an HTTP/1.0 sender keeps the connection open.
    KeepAlive,
    /// The field of this name (any case) belongs to the connection and is dropped with it:
    /// always a valid field name, never a [`PROTECTED`] one.
    Field(&'a [u8]),
}

/// The options one `Connection` field value lists (RFC 9110 §7.6.1): tokens separated by
/// commas, whitespace around them ignored, empty elements skipped (§5.6.1), compared without
/// regard to case. Elements that are not a token (spaces or control bytes inside, non-ASCII)
/// and tokens naming a [`PROTECTED`] field nominate nothing. A message may carry several
/// `Connection` fields: each value is read on its own and their options add up.
#[inline(always)]
pub(crate) fn connection_options(value: &[u8]) -> ConnectionOptions<'_> {
    ConnectionOptions { rest: Some(value) }
}

/// The iterator [`connection_options`] returns. Written out rather than `split().filter_map()`:
/// nearly every upstream response carries `Connection: keep-alive`, and the adapters' closure
/// shims were not inlined into the response parser, and neither was this iterator's `next`
/// until it was marked so (bench/instructions: ~200 instructions a response).
pub(crate) struct ConnectionOptions<'a> {
    /// What is left to read; `None` once the last element was read.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for ConnectionOptions<'a> {
    type Item = ConnectionOption<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<ConnectionOption<'a>> {
        loop {
            let rest = self.rest?;
            let element = match rest.iter().position(|&b| b == b',') {
                Some(comma) => {
                    self.rest = Some(&rest[comma + 1..]);
                    &rest[..comma]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            if let Some(option) = connection_option(element) {
                return Some(option);
            }
        }
    }
}

/// One element of a `Connection` value, read as [`connection_options`] says. Inlined: nearly
/// every upstream response says `keep-alive`, and that should cost the two comparisons.
#[inline(always)]
fn connection_option(element: &[u8]) -> Option<ConnectionOption<'_>> {
    let token = element.trim_ascii();
    if token.eq_ignore_ascii_case(b"keep-alive") {
        Some(ConnectionOption::KeepAlive)
    } else if token.eq_ignore_ascii_case(b"close") {
        Some(ConnectionOption::Close)
    } else if token.is_empty() || !token.iter().all(|&b| is_tchar(b)) || is_protected(token) {
        None
    } else {
        Some(ConnectionOption::Field(token))
    }
}

/// Whether the message's `Connection` fields nominate the field `name`.
#[inline]
pub(crate) fn nominates(connection: &GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    connection.iter().any(|value| {
        connection_options(value.as_bytes()).any(
            |option| matches!(option, ConnectionOption::Field(f) if f.eq_ignore_ascii_case(name)),
        )
    })
}

/// A token character (RFC 9110 §5.6.2), the characters of a field name.
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    use ConnectionOption::{Close, Field, KeepAlive};

    fn options(value: &[u8]) -> Vec<ConnectionOption<'_>> {
        connection_options(value).collect()
    }

    #[test]
    fn the_list_is_the_same_for_raw_names_in_any_case_and_for_header_names() {
        for name in NAMES {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert!(of_raw(name.as_bytes()).is_some(), "{name}");
            assert!(
                of_raw(name.to_ascii_uppercase().as_bytes()).is_some(),
                "{name}"
            );
        }
        assert_eq!(of_raw(b"Connection"), Some(HopByHop::Connection));
        assert_eq!(
            of_raw(b"TRANSFER-ENCODING"),
            Some(HopByHop::TransferEncoding)
        );
        for name in [
            "content-length",
            "host",
            "tea",
            "trailers",
            "x-connection",
            "via",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert_eq!(of_raw(name.as_bytes()), None, "{name}");
        }
    }

    #[test]
    fn options_are_read_in_any_case_with_whitespace_and_empty_elements_ignored() {
        assert_eq!(options(b"close"), [Close]);
        assert_eq!(options(b"CLOSE"), [Close]);
        assert_eq!(options(b"Keep-Alive"), [KeepAlive]);
        assert_eq!(
            options(b" keep-alive ,\tX-Hop,, ,x-other\t"),
            [KeepAlive, Field(b"X-Hop"), Field(b"x-other")]
        );
        assert_eq!(options(b""), []);
        assert_eq!(options(b",,, ,\t,"), []);
        assert_eq!(options(b"close,close"), [Close, Close]);
    }

    #[test]
    fn framing_host_and_the_gateways_fields_are_never_nominated() {
        for protected in PROTECTED {
            assert_eq!(options(protected.as_bytes()), [], "{protected}");
            let shouted = protected.to_ascii_uppercase();
            assert_eq!(options(shouted.as_bytes()), [], "{shouted}");
            let listed = format!("close, {protected} ,x-ok");
            assert_eq!(
                options(listed.as_bytes()),
                [Close, Field(b"x-ok")],
                "{listed}"
            );
        }
        assert_eq!(options(b"X-Graylane-Lane, x-graylane-anything"), []);
        assert_eq!(options(b"x-graylane"), [Field(b"x-graylane")]);
    }

    #[test]
    fn junk_elements_nominate_nothing() {
        // What an obs-fold, a stray CR/LF or non-ASCII bytes leave in a value.
        assert_eq!(
            options(b"x-a,\r\n\tx-b, x c, x\x00d, caf\xc3\xa9, \xff, (x-e), x-f"),
            [Field(b"x-a"), Field(b"x-b"), Field(b"x-f")]
        );
        assert_eq!(options(b"close\r\n keep-alive"), []);
        assert_eq!(options(b"\"close\""), []);
    }

    #[test]
    fn an_over_long_list_is_read_to_its_end() {
        let mut value = "x-filler, ".repeat(20_000);
        value.push_str("close, x-last");
        let read = options(value.as_bytes());
        assert_eq!(read.len(), 20_002);
        assert_eq!(read[20_000..], [Close, Field(b"x-last")]);
        let long_name = "x".repeat(10_000);
        assert_eq!(options(long_name.as_bytes()), [Field(long_name.as_bytes())]);
    }

    #[test]
    fn every_connection_field_of_a_message_nominates() {
        let mut headers = HeaderMap::new();
        for value in ["keep-alive", "", "X-First ,", "content-length, x-second"] {
            headers.append("connection", HeaderValue::from_static(value));
        }
        let connection = headers.get_all("connection");
        for name in ["x-first", "x-second"] {
            assert!(
                nominates(&connection, &HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in [
            "content-length",
            "keep-alive",
            "close",
            "x-third",
            "x-secon",
        ] {
            assert!(
                !nominates(&connection, &HeaderName::from_static(name)),
                "{name}"
            );
        }
        let none = HeaderMap::new();
        assert!(!nominates(
            &none.get_all("connection"),
            &HeaderName::from_static("x-first")
        ));
    }
}
