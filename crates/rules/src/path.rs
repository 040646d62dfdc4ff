//! Request paths in their normal form, so that a rule or limit scoped to a path prefix sees the
//! same path whichever spelling of it a client chose.
//!
//! RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded (`%63` → `c`, `%2E` →
//! `.`), the other percent-encodings get upper-case hex digits, dot segments are removed
//! (`/a/./b/../c` → `/a/c`, never above the root), and, as nginx's `merge_slashes` does, runs
//! of `/` become one. Decoding comes first, so `/%2e%2e/` is removed like `/../`.
//!
//! Some spellings cannot be normalised safely and are refused instead: an encoded slash or
//! backslash (`%2F`, `%5C`, a raw `\`), which an upstream that decodes before routing would
//! read as a separator graylane did not see (unless the listener keeps them), a dot segment
//! with parameters (`/..;/`, which Tomcat and Jetty resolve as `..`), and a `%` that does not
//! start a valid escape.
//!
//! Rules then match on [`without_parameters`] of it: Java servlet containers drop a segment's
//! `;parameters` before they route, so graylane must not let `/api;x/admin` pass for another
//! path than `/api/admin`.
//!
//! A path already in normal form (nearly every request) is returned borrowed, after one scan.

use std::borrow::Cow;

use graylane_config::EscapedSlashes;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F`, `%5C` or `\` in the path, on a listener that rejects them.
    EscapedSlash,
    /// A `.` or `..` segment with parameters after a `;`.
    DotSegmentParameters,
    /// A `%` not followed by two hexadecimal digits.
    BadPercentEncoding,
}

impl PathError {
    /// What is wrong, for the `400` the client gets.
    pub fn describe(self) -> &'static str {
        match self {
            PathError::EscapedSlash => {
                "the path contains an encoded slash or a backslash (%2F, %5C or \\)"
            }
            PathError::DotSegmentParameters => {
                "the path contains a dot segment with parameters (such as /..;/)"
            }
            PathError::BadPercentEncoding => "the path contains a % not followed by two hex digits",
        }
    }
}

/// The path routing rules and limits see: a normal path (from [`normalize`]) with every
/// segment's parameters (`;…`) removed, as Tomcat, Jetty and Spring remove them before they
/// route, so `/api;x/admin` is matched as the `/api/admin` those upstreams will serve. The
/// upstream still gets the parameters. Borrowed when the path has no `;`.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut ends_with_slash = false;
    for segment in path.split('/').skip(1) {
        let segment = segment.split(';').next().unwrap_or_default();
        ends_with_slash = segment.is_empty();
        if !segment.is_empty() {
            out.push('/');
            out.push_str(segment);
        }
    }
    if ends_with_slash || out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// `path` in normal form (see the module documentation); borrowed when it already is.
pub fn normalize(path: &str, escaped_slashes: EscapedSlashes) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes(), escaped_slashes)?;
    let normal = remove_dot_segments(&decoded)?;
    Ok(if normal == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(normal)
    })
}

/// True when nothing in `path` can change under normalisation: no `%`, no `\`, no empty
/// segment and no segment starting with a dot.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        // `*` (OPTIONS) and an empty path are left alone.
        return !path.contains(&b'%') && !path.contains(&b'\\');
    }
    // Checked a few bytes at a time: this runs on every request, and a typical API path has
    // no `%`, `\\` or `.` at all, leaving only the slashes to look at.
    if memchr::memchr2(b'%', b'\\', path).is_some() {
        return false;
    }
    memchr::memchr_iter(b'/', path).all(|i| !matches!(path.get(i + 1), Some(b'/' | b'.')))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &[u8], escaped_slashes: EscapedSlashes) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let reject_slashes = escaped_slashes == EscapedSlashes::Reject;
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'\\' && reject_slashes {
            return Err(PathError::EscapedSlash);
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            path.get(i + 1).copied().and_then(hex),
            path.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadPercentEncoding);
        };
        let c = hi * 16 + lo;
        if matches!(c, b'/' | b'\\') && reject_slashes {
            return Err(PathError::EscapedSlash);
        }
        if is_unreserved(c) {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', HEX[hi as usize], HEX[lo as usize]]);
        }
        i += 3;
    }
    // Only ASCII was decoded and the rest copied unchanged, so the bytes are still UTF-8.
    String::from_utf8(out).map_err(|_| PathError::BadPercentEncoding)
}

/// RFC 3986 §5.2.4 on a path whose escapes are already normal, with empty segments dropped.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Ok(path.to_string());
    };
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::DotSegmentParameters);
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path, EscapedSlashes::Reject).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api/payment/orders",
            "/a.b/c.d/",
            "/x-y_z~",
            "*",
            "/a;b=c",
        ] {
            assert!(
                matches!(normalize(p, EscapedSlashes::Reject), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn every_spelling_of_a_path_has_one_normal_form() {
        for p in [
            "/api/payment/orders",
            "//api/payment/orders",
            "/api//payment///orders",
            "/api/./payment/orders",
            "/api/x/../payment/orders",
            "/api/x/y/../../payment/orders",
            "/x/../api/payment/orders",
            "/../api/payment/orders",
            "/%61pi/payment/%6Frders",
            "/api/%70ayment/orders",
            "/api/%2e/payment/orders",
            "/api/%2E%2E/api/payment/orders",
            "/api/x/%2e%2e/payment/orders",
            "/api/payment/orders/.",
        ] {
            let n = norm(p).unwrap();
            let want = if p.ends_with("/.") {
                "/api/payment/orders/"
            } else {
                "/api/payment/orders"
            };
            assert_eq!(n, want, "{p}");
        }
    }

    #[test]
    fn trailing_slashes_and_the_root_are_kept() {
        assert_eq!(norm("/a/b/").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/./").unwrap(), "/");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/a/...").unwrap(), "/a/...");
    }

    #[test]
    fn other_escapes_stay_encoded_in_upper_case() {
        assert_eq!(norm("/a%20b/%c3%a9").unwrap(), "/a%20b/%C3%A9");
        assert_eq!(norm("/q%3fx").unwrap(), "/q%3Fx");
        assert_eq!(norm("/nul%00").unwrap(), "/nul%00");
    }

    #[test]
    fn unsafe_spellings_are_refused() {
        for p in [
            "/api%2Fpayment",
            "/api%2fpayment",
            "/api%5Cpayment",
            "/api\\payment",
        ] {
            assert_eq!(norm(p), Err(PathError::EscapedSlash), "{p}");
        }
        for p in ["/public/..;/api/payment", "/a/.;x/b", "/a/%2e%2e;/b"] {
            assert_eq!(norm(p), Err(PathError::DotSegmentParameters), "{p}");
        }
        for p in ["/a%", "/a%2", "/a%zz", "/a%%41"] {
            assert_eq!(norm(p), Err(PathError::BadPercentEncoding), "{p}");
        }
    }

    #[test]
    fn escaped_slashes_can_be_kept() {
        let kept = normalize("/a%2fb/./c", EscapedSlashes::Keep).unwrap();
        assert_eq!(kept, "/a%2Fb/c");
        let kept = normalize("/a\\b", EscapedSlashes::Keep).unwrap();
        assert_eq!(kept, "/a\\b");
    }

    #[test]
    fn routing_sees_paths_without_segment_parameters() {
        for (path, want) in [
            ("/api;x/admin", "/api/admin"),
            ("/api;/admin", "/api/admin"),
            ("/;/api/admin", "/api/admin"),
            ("/api/admin;jsessionid=1", "/api/admin"),
            ("/a;b/", "/a/"),
            ("/;x", "/"),
        ] {
            assert_eq!(without_parameters(path), want, "{path}");
        }
        assert!(matches!(without_parameters("/api/admin"), Cow::Borrowed(_)));
    }
}
