//! Not part of graylane's API: the entry points of the fuzz targets in `fuzz/`, which reach the
//! upstream client's response head parser and chunked body decoder without a socket. Compiled
//! with every build (and tested below), so a change to the codec that would break the targets
//! fails here rather than at the next fuzzing run.

use bytes::BytesMut;
use http::{HeaderMap, Method, StatusCode};

use crate::upstream::ExchangeError;
use crate::upstream::chunked::{Chunk, ChunkState};
use crate::upstream::codec::{self, Parsed, ResponseFraming};

/// How a parsed response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (a response to HEAD, a 204 or 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// To the end of the connection.
    UntilClose,
}

/// A final response head as the upstream client reads it.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes taken off the front of the input, informational heads before this one included.
    pub consumed: usize,
    /// The status.
    pub status: StatusCode,
    /// The headers the client would be sent.
    pub headers: HeaderMap,
    /// How the body that follows is framed.
    pub framing: BodyFraming,
    /// Whether the connection could go back to the pool after the body.
    pub keep_alive: bool,
}

/// Parses the response to a `method` request off the front of `input` as the upstream client
/// does: informational heads are skipped and the first final one is returned. `Ok(None)`: the
/// input ends before a final head does. `Err`: the head is refused, for the reason given.
pub fn parse_response_head(input: &[u8], method: &Method) -> Result<Option<ResponseHead>, String> {
    let mut buf = BytesMut::from(input);
    let mut spans = Vec::new();
    loop {
        match codec::parse_head(&mut buf, method, &mut spans) {
            Ok(Parsed::Final(head)) => {
                return Ok(Some(ResponseHead {
                    consumed: input.len() - buf.len(),
                    status: head.parts.status,
                    headers: head.parts.headers,
                    framing: match head.framing {
                        ResponseFraming::Empty => BodyFraming::Empty,
                        ResponseFraming::Length(n) => BodyFraming::Length(n),
                        ResponseFraming::Chunked => BodyFraming::Chunked,
                        ResponseFraming::UntilClose => BodyFraming::UntilClose,
                    },
                    keep_alive: head.keep_alive,
                }));
            }
            Ok(Parsed::Informational) => {}
            Ok(Parsed::Partial) => return Ok(None),
            Err(ExchangeError::Protocol(why)) => return Err(why),
            Err(ExchangeError::Io { error, .. }) => return Err(error.to_string()),
        }
    }
}

/// A chunked body as the upstream client decodes it.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedBody {
    /// The body's data.
    pub data: Vec<u8>,
    /// The last chunk and the trailers were read: the body ended before the input did.
    pub ended: bool,
    /// What was left undecoded: the bytes after the body's end, or an incomplete line.
    pub rest: Vec<u8>,
}

/// Decodes a chunked body that arrives in `pieces`, each appended to the read buffer when the
/// decoder asks for more, as reads off a socket would. `Err`: the framing is invalid, for the
/// reason given.
pub fn decode_chunked<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<DecodedBody, String> {
    let mut pieces = pieces.into_iter();
    let (mut state, mut buf, mut data) = (ChunkState::Size, BytesMut::new(), Vec::new());
    let ended = loop {
        match state.decode(&mut buf).map_err(|e| e.to_string())? {
            Chunk::Data(d) => data.extend_from_slice(&d),
            Chunk::End => break true,
            Chunk::NeedMore => match pieces.next() {
                Some(piece) => buf.extend_from_slice(piece),
                None => break false,
            },
        }
    };
    Ok(DecodedBody {
        data,
        ended,
        rest: buf.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_head_is_read_past_informational_ones_as_the_client_reads_it() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: x-hop\r\n\
                     X-Hop: 1\r\nContent-Length: 2\r\n\r\nok";
        let head = parse_response_head(wire, &Method::POST).unwrap().unwrap();
        assert_eq!(head.consumed, wire.len() - 2);
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, BodyFraming::Length(2));
        assert!(head.keep_alive);
        assert_eq!(head.headers.len(), 1, "{:?}", head.headers);
        assert!(
            parse_response_head(b"HTTP/1.1 200 OK\r\n", &Method::GET)
                .unwrap()
                .is_none()
        );
        let refused = parse_response_head(b"HTTP/1.1 101 Switching\r\n\r\n", &Method::GET);
        assert!(refused.unwrap_err().contains("upgrades"));
    }

    #[test]
    fn a_chunked_body_is_decoded_from_any_split_of_its_bytes() {
        let wire = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\nrest";
        let whole = decode_chunked([&wire[..]]).unwrap();
        assert_eq!(
            whole,
            DecodedBody {
                data: b"abcde".to_vec(),
                ended: true,
                rest: b"rest".to_vec(),
            }
        );
        let bytewise = decode_chunked(wire.chunks(1)).unwrap();
        assert_eq!((bytewise.data, bytewise.ended), (whole.data, true));
        assert!(decode_chunked([&b"2\r\nabc\r\n"[..]]).is_err());
    }
}
