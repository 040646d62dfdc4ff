//! Fuzzed upstream responses through the upstream client's response head parser and, after a
//! chunked head, its chunked body decoder (`graylane_proxy::fuzzing`): nothing may panic, and
//! what the parser passes on must be safe to hand to a client.
//!
//! The first input byte picks the request method (HEAD changes the framing), the second how
//! many bytes each socket read brings (0: all at once); the rest is what the upstream sent.
//!
//! Checks on a parsed head: it consumed no more than the input; it is a final (non-1xx) one;
//! no hop-by-hop field and no `x-graylane-` field reaches the client; a chunked response
//! carries no `Content-Length` and a HEAD response no body. Checks on a chunked body: it
//! yields no more data than the input held, and decoding it fed in small reads gives the same
//! data as decoding it at once (where the small reads fail, they may fail earlier: a long line
//! is refused before its end arrives).

#![no_main]

use graylane_proxy::fuzzing::{self, BodyFraming};
use http::Method;
use libfuzzer_sys::fuzz_target;

/// The hop-by-hop fields (RFC 9110 §7.6.1), none of which may reach a client.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let [method, step, wire @ ..] = data else {
        return;
    };
    let method = match method % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::DELETE,
    };
    let step = usize::from(*step);

    // The bytes alone, as a chunked body: the decoder must cope with whatever follows a head.
    check_chunked(wire, step);

    let head = match fuzzing::parse_response_head(wire, &method) {
        Ok(Some(head)) => head,
        Ok(None) => return,
        Err(why) => {
            assert!(!why.is_empty(), "a refusal without a reason");
            return;
        }
    };
    assert!(head.consumed <= wire.len(), "consumed more than the input");
    assert!(!head.status.is_informational(), "a 1xx head returned as final");
    for name in head.headers.keys() {
        let name = name.as_str();
        assert!(!HOP_BY_HOP.contains(&name), "hop-by-hop {name} passed on");
        assert!(!name.starts_with("x-graylane-"), "the upstream's {name} passed on");
    }
    if head.framing == BodyFraming::Chunked {
        assert!(
            !head.headers.contains_key(http::header::CONTENT_LENGTH),
            "chunked and Content-Length passed on together"
        );
        check_chunked(&wire[head.consumed..], step);
    }
    if method == Method::HEAD {
        assert_eq!(head.framing, BodyFraming::Empty, "a body after HEAD");
    }
});

fn check_chunked(body: &[u8], step: usize) {
    let whole = fuzzing::decode_chunked([body]);
    if let Ok(whole) = &whole {
        assert!(whole.data.len() <= body.len(), "more data than input");
        assert!(whole.rest.len() <= body.len(), "more left over than input");
    }
    if step == 0 {
        return;
    }
    if let Ok(pieces) = fuzzing::decode_chunked(body.chunks(step)) {
        let whole = whole.unwrap_or_else(|e| {
            panic!("decoded in reads of {step} bytes but refused at once: {e}")
        });
        assert_eq!(whole.data, pieces.data, "the data depends on how it arrived");
        assert_eq!(whole.ended, pieces.ended, "the end depends on how it arrived");
    }
}
