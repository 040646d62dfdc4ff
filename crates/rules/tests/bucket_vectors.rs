//! Checks every test vector in `docs/bucketing.md` — computed independently with Python's
//! `xxhash` package — against the Rust implementation, so the documentation and the code
//! cannot drift apart.

use graylane_rules::bucket::bucket;

struct Vector {
    service: String,
    salt: String,
    key: String,
    key_hex: String,
    xxh64: String,
    bucket: u32,
}

fn unquote(cell: &str) -> String {
    match cell.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        Some(inner) => inner.to_string(),
        None => panic!("expected a double-quoted cell, got {cell:?}"),
    }
}

/// The rows of the table whose header starts `| service | salt | key |`.
fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/bucketing.md");
    let doc = std::fs::read_to_string(path).expect("docs/bucketing.md is readable");
    let mut lines = doc
        .lines()
        .skip_while(|l| !l.starts_with("| service | salt | key |"))
        .skip(2); // header and separator
    let mut out = Vec::new();
    for line in lines.by_ref().take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "malformed row: {line}");
        out.push(Vector {
            service: unquote(cells[0]),
            salt: unquote(cells[1]),
            key: unquote(cells[2]),
            key_hex: cells[3].to_string(),
            xxh64: cells[4].to_string(),
            bucket: cells[5].parse().expect("bucket is a number"),
        });
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn documented_vectors_hold() {
    let vectors = vectors();
    assert!(vectors.len() >= 20, "only {} vectors found", vectors.len());
    for v in &vectors {
        let key = v.key.as_bytes();
        let shown = if key.is_empty() {
            "(none)".to_string()
        } else {
            hex(key)
        };
        assert_eq!(shown, v.key_hex, "key bytes of {:?}", v.key);

        let mut input = Vec::new();
        input.extend_from_slice(v.service.as_bytes());
        input.push(0);
        input.extend_from_slice(v.salt.as_bytes());
        input.push(0);
        input.extend_from_slice(key);
        let h = xxhash_rust::xxh64::xxh64(&input, 0);
        assert_eq!(
            format!("{h:016x}"),
            v.xxh64,
            "xxh64 of {:?}/{:?}/{:?}",
            v.service,
            v.salt,
            v.key
        );

        assert_eq!(
            bucket(&v.service, &v.salt, key),
            v.bucket,
            "bucket of {:?}/{:?}/{:?}",
            v.service,
            v.salt,
            v.key
        );
    }
}

#[test]
fn vectors_cover_the_required_cases() {
    let vectors = vectors();
    let has = |f: &dyn Fn(&Vector) -> bool| vectors.iter().any(f);
    assert!(has(&|v| v.key.is_empty()), "an empty key");
    assert!(has(&|v| !v.key.is_ascii()), "a unicode key");
    assert!(
        has(&|v| v.key.parse::<std::net::Ipv4Addr>().is_ok()),
        "an IPv4 key"
    );
    assert!(
        has(&|v| v.key.parse::<std::net::Ipv6Addr>().is_ok()),
        "an IPv6 key"
    );
}
