//! The decoder of a chunked response body (RFC 9112 §7.1), with no socket of its own: it
//! decodes off the front of a byte buffer and says when it needs more. The response body
//! (`body.rs`) feeds it from the connection's read buffer; the fuzz targets (`fuzzing.rs`) feed
//! it arbitrary bytes.

use std::io;

use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (with extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// Where the decoding of a chunked body stands (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    Data {
        remaining: u64,
    },
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// What one step of decoding a chunked body gave.
pub(crate) enum Chunk {
    /// Body data: at most the rest of the current chunk, and no more than was buffered.
    Data(Bytes),
    /// The buffer ends before the next step can be taken: read more into it and decode again.
    NeedMore,
    /// The last chunk and the trailers were consumed: the body has ended.
    End,
}

impl ChunkState {
    /// Decodes off the front of `buf`, consuming what it decodes, until it has data, needs more
    /// bytes or reaches the end of the body. Trailers are dropped: few clients use them and
    /// HTTP/1.1 ones rarely expect them from a proxy.
    #[inline]
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Chunk> {
        loop {
            match *self {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    *self = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data { remaining: size }
                    };
                }
                ChunkState::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let n = buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = remaining - data.len() as u64;
                    *self = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    if !line.is_empty() {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    *self = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    if line.is_empty() {
                        return Ok(Chunk::End);
                    }
                }
            }
        }
    }
}

/// The next CRLF-terminated line of a chunked body, without its CRLF, consumed from `buf`;
/// `None` while it is not all there.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
        let line = buf.split_to(pos).freeze();
        buf.advance(2);
        return Ok(Some(line));
    }
    if buf.len() > MAX_CHUNK_LINE {
        return Err(invalid("chunk-size line too long"));
    }
    Ok(None)
}

fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("invalid chunk size"));
    }
    digits.iter().try_fold(0u64, |acc, b| {
        let d = (*b as char)
            .to_digit(16)
            .ok_or_else(|| invalid("invalid chunk size"))?;
        Ok(acc * 16 + u64::from(d))
    })
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {why}"))
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed `step` bytes at a time, as reads off a socket would bring it.
    fn decode_in_steps(wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool, BytesMut)> {
        let mut state = ChunkState::Size;
        let (mut buf, mut data) = (BytesMut::new(), Vec::new());
        let mut pieces = wire.chunks(step);
        loop {
            match state.decode(&mut buf)? {
                Chunk::Data(d) => data.extend_from_slice(&d),
                Chunk::End => return Ok((data, true, buf)),
                Chunk::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Ok((data, false, buf)),
                },
            }
        }
    }

    #[test]
    fn a_chunked_body_decodes_the_same_however_it_arrives() {
        let wire = b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\
                     trailer: dropped\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, ended, rest) = decode_in_steps(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(ended, "step {step}");
            // What follows the body stays for the connection (and keeps it out of the pool).
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
        let (data, ended, _) = decode_in_steps(b"5\r\nhel", 2).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"hel"[..], false));
    }

    #[test]
    fn a_chunked_body_that_breaks_its_framing_is_an_error() {
        for wire in [
            &b"3\r\nhello\r\n0\r\n\r\n"[..],
            b"x\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            let error = decode_in_steps(wire, wire.len()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{wire:?}");
        }
        let long_line = [b'1'; MAX_CHUNK_LINE + 1];
        let error = decode_in_steps(&long_line, 64).unwrap_err();
        assert!(error.to_string().contains("too long"), "{error}");
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0;ext=1").unwrap(), 0);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"zz").is_err());
        assert!(parse_chunk_size(b"ffffffffffffffffff").is_err());
    }
}
