//! URLs as logs, errors, metrics and a viewer's copy of the configuration may show them: without
//! the secrets a configuration can carry in them (a Redis password, a webhook's token). This is
//! the project's one redactor; every crate that shows a URL uses it.

/// `url` with the password of its userinfo, a bare userinfo (often a token) and every query
/// value replaced by `***`: `redis://:pw@h:6379` → `redis://:***@h:6379`,
/// `http://h/hook?token=abc` → `http://h/hook?token=***`. Text that is not a URL comes back
/// unchanged.
///
/// A password with an unencoded `/`, `?` or `#` makes the authority ambiguous: the first of them
/// seems to end it, and the `@` after it seems part of the path. When the apparent authority
/// has no `@` but a later `@` is followed by something shaped like a host, everything between
/// `://` and the last such `@` is masked. A path or query that itself holds `user@host` is then
/// masked too: showing too little is the safe side.
///
/// ```
/// use graylane_config::redact_url;
/// assert_eq!(redact_url("redis://app:s3cret@10.0.0.5:6379/0"), "redis://app:***@10.0.0.5:6379/0");
/// assert_eq!(redact_url("http://h:7000/hooks?token=abc&x=1"), "http://h:7000/hooks?token=***&x=***");
/// assert_eq!(redact_url("redis://:Sec/ret@10.0.0.5:6379"), "redis://***@10.0.0.5:6379");
/// assert_eq!(redact_url("http://127.0.0.1:9090"), "http://127.0.0.1:9090");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let mut out = format!("{scheme}://");
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let tail = match rest[..authority_end].rfind('@') {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _password)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str("***@"),
            }
            out.push_str(&rest[at + 1..authority_end]);
            &rest[authority_end..]
        }
        None => match ambiguous_userinfo_end(rest) {
            Some(at) => {
                out.push_str("***@");
                let host = &rest[at + 1..];
                let host_end = host.find(['/', '?', '#']).unwrap_or(host.len());
                out.push_str(&host[..host_end]);
                &host[host_end..]
            }
            None => {
                out.push_str(&rest[..authority_end]);
                &rest[authority_end..]
            }
        },
    };
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((t, f)) => (t, Some(f)),
        None => (tail, None),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) => format!("{name}=***"),
                    None => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// In `rest` (a URL after its `://`), the last `@` followed by a host-shaped authority (letters,
/// digits, `.-_:[]%`, ending at `/`, `?`, `#` or the end): where a userinfo holding a `/`, `?` or
/// `#` would end.
fn ambiguous_userinfo_end(rest: &str) -> Option<usize> {
    let host_like =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%');
    rest.match_indices('@').map(|(i, _)| i).rev().find(|&at| {
        let after = &rest[at + 1..];
        let host = &after[..after.find(['/', '?', '#']).unwrap_or(after.len())];
        !host.is_empty() && host.chars().all(host_like)
    })
}

/// `text` (a YAML document, a diff of two) with every URL in it passed through [`redact_url`].
/// A URL starts at `scheme://`; it ends at the closing quote when it opens a quoted scalar, and
/// otherwise at whitespace, less any `,`, `]` or `}` that close a flow collection after it.
///
/// ```
/// use graylane_config::redact_urls_in;
/// let yaml = "segments:\n  beta: { source: redis, url: \"redis://:pw@h:6379\", key: k }\n\
///             webhooks:\n  - url: http://h/hook?token=abc # team\n";
/// assert_eq!(
///     redact_urls_in(yaml),
///     "segments:\n  beta: { source: redis, url: \"redis://:***@h:6379\", key: k }\n\
///      webhooks:\n  - url: http://h/hook?token=*** # team\n"
/// );
/// ```
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let scheme_len = rest[..sep]
            .chars()
            .rev()
            .take_while(|&c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .count();
        let start = sep - scheme_len;
        if !rest[start..sep]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
        {
            out.push_str(&rest[..sep + 3]);
            rest = &rest[sep + 3..];
            continue;
        }
        let len = url_len(&rest[start..], rest[..start].chars().next_back());
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..start + len]));
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// The length of the URL at the start of `text`, `before` being the character in front of it.
fn url_len(text: &str, before: Option<char>) -> usize {
    let line = &text[..text.find(['\n', '\r']).unwrap_or(text.len())];
    match before {
        // In YAML `\"` escapes a double quote and `''` a single one.
        Some('"') => {
            let mut escaped = false;
            line.char_indices()
                .find(|&(_, c)| {
                    let end = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map_or(line.len(), |(i, _)| i)
        }
        Some('\'') => {
            let mut chars = line.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|&(_, next)| next == '\'') {
                        chars.next();
                    } else {
                        return i;
                    }
                }
            }
            line.len()
        }
        _ => {
            let token = &line[..line.find(char::is_whitespace).unwrap_or(line.len())];
            token.trim_end_matches([',', ']', '}']).len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_and_the_rest_kept() {
        for (url, shown) in [
            ("redis://:pw@h:6379", "redis://:***@h:6379"),
            ("redis://u:p:w@h", "redis://u:***@h"),
            ("redis://h:6379/2", "redis://h:6379/2"),
            ("http://tok3n@hooks.example/x", "http://***@hooks.example/x"),
            (
                "redis://tokenSECRET@127.0.0.1:6379",
                "redis://***@127.0.0.1:6379",
            ),
            (
                "redis://h:6379/0?password=QSECRET",
                "redis://h:6379/0?password=***",
            ),
            ("http://h/a?b", "http://h/a?b"),
            ("http://h/a?k=v#frag", "http://h/a?k=***#frag"),
            ("http://u:p@h/p@q", "http://u:***@h/p@q"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_password_with_an_unencoded_delimiter_is_masked_up_to_the_last_at() {
        for (url, shown) in [
            (
                "redis://:Sec/ret1@127.0.0.1:16379",
                "redis://***@127.0.0.1:16379",
            ),
            (
                "redis://:Sec#ret1@127.0.0.1:16379",
                "redis://***@127.0.0.1:16379",
            ),
            (
                "redis://:Sec?ret1@127.0.0.1:16379/0",
                "redis://***@127.0.0.1:16379/0",
            ),
            ("redis://u:a/b@c/d@h:1", "redis://***@h:1"),
            ("redis://Sec/ret@127.0.0.1", "redis://***@127.0.0.1"),
            (
                "http://:to/k?en@h:80/hook?token=abc",
                "http://***@h:80/hook?token=***",
            ),
            // No host-shaped text after the `@`: a query value, masked as one.
            ("http://h/hook?to@ken=abc", "http://h/hook?to@ken=***"),
        ] {
            let got = redact_url(url);
            assert_eq!(got, shown, "{url}");
            for secret in ["Sec", "ret1", "a/b", "to/k", "abc"] {
                assert!(!got.contains(secret), "{url} → {got}");
            }
        }
    }

    #[test]
    fn urls_in_a_document_are_redacted_where_they_stand() {
        let yaml = "\
a: redis://:p1@h:1
b: \"redis://:p2 x@h:2\"
c: 'redis://:p''3@h:3'
d: [redis://:p4@h:4, http://h/x?t=p5]
e: {u: http://h/x?t=p6}
f: text with http://h/y?t=p7, and more
g: ://not-a-url?t=kept
h: redis://:Sec/p8@h:5
";
        let shown = redact_urls_in(yaml);
        assert_eq!(
            shown,
            "\
a: redis://:***@h:1
b: \"redis://:***@h:2\"
c: 'redis://:***@h:3'
d: [redis://:***@h:4, http://h/x?t=***]
e: {u: http://h/x?t=***}
f: text with http://h/y?t=***, and more
g: ://not-a-url?t=kept
h: redis://***@h:5
"
        );
    }

    #[test]
    fn a_diff_is_redacted_line_by_line() {
        let diff = "--- revision 1\n+++ revision 2\n@@ -1 +1 @@\n-url: redis://:old@h\n+url: redis://:new@h\n";
        assert_eq!(
            redact_urls_in(diff),
            "--- revision 1\n+++ revision 2\n@@ -1 +1 @@\n-url: redis://:***@h\n+url: redis://:***@h\n"
        );
    }
}
