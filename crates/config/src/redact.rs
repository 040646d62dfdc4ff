//! URLs as logs, errors and metrics may show them: without the secrets a configuration can
//! carry in them (a Redis password, a webhook's token).

/// `url` with the password of its userinfo, a bare userinfo (often a token) and every query
/// value replaced by `***`: `redis://:pw@h:6379` → `redis://:***@h:6379`,
/// `http://h/hook?token=abc` → `http://h/hook?token=***`. Text that is not a URL comes back
/// unchanged.
///
/// ```
/// use graylane_config::redact_url;
/// assert_eq!(redact_url("redis://app:s3cret@10.0.0.5:6379/0"), "redis://app:***@10.0.0.5:6379/0");
/// assert_eq!(redact_url("http://h:7000/hooks?token=abc&x=1"), "http://h:7000/hooks?token=***&x=***");
/// assert_eq!(redact_url("http://127.0.0.1:9090"), "http://127.0.0.1:9090");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = format!("{scheme}://");
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            match userinfo.split_once(':') {
                Some((user, _password)) => out.push_str(&format!("{user}:***@")),
                None => out.push_str("***@"),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
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
            ("http://h/a?b", "http://h/a?b"),
            ("http://h/a?k=v#frag", "http://h/a?k=***#frag"),
            ("http://u:p@h/p@q", "http://u:***@h/p@q"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
