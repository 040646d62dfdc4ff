//! A minimal MaxMind DB writer, so the GeoIP tests build their own small country database at
//! run time instead of shipping or downloading one.
//!
//! The file follows the MaxMind DB 2.0 format: a binary search tree over IPv6 addresses (IPv4
//! networks live under `::/96`, where the readers look them up) with 24-bit records, a 16-byte
//! separator, a data section holding one GeoIP2-Country-shaped record per country
//! (`{country: {iso_code: "DE"}}`), then `\xAB\xCD\xEFMaxMind.com` and the metadata map.

use std::net::IpAddr;
use std::path::Path;

/// Writes to `path` a MaxMind DB that maps each network (`"127.0.0.2/32"`, `"2001:db8::/32"`)
/// to the ISO country code beside it, the way a GeoIP2 Country database does. A later network
/// inside an earlier one wins for its addresses. Panics on a malformed network: the networks
/// are the test's own.
pub fn write_country_db(path: &Path, networks: &[(&str, &str)]) -> std::io::Result<()> {
    std::fs::write(path, country_db(networks))
}

/// The bytes [`write_country_db`] writes.
pub fn country_db(networks: &[(&str, &str)]) -> Vec<u8> {
    let mut tree = Tree::default();
    let mut data = Vec::new();
    let mut records: Vec<(&str, u32)> = Vec::new();
    for (net, code) in networks {
        let offset = match records.iter().find(|(c, _)| c == code) {
            Some((_, offset)) => *offset,
            None => {
                let offset = data.len() as u32;
                write_map_header(&mut data, 1);
                write_str(&mut data, "country");
                write_map_header(&mut data, 1);
                write_str(&mut data, "iso_code");
                write_str(&mut data, code);
                records.push((code, offset));
                offset
            }
        };
        let (bits, len) = parse_network(net);
        tree.insert(bits, len, offset);
    }

    let node_count = tree.nodes.len() as u32;
    let mut out = Vec::with_capacity(tree.nodes.len() * 6 + data.len() + 256);
    for node in &tree.nodes {
        for child in node {
            let record = match *child {
                Child::Empty => node_count,
                Child::Node(i) => i,
                Child::Data(offset) => node_count + 16 + offset,
            };
            out.extend_from_slice(&record.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    write_metadata(&mut out, node_count);
    out
}

#[derive(Clone, Copy)]
enum Child {
    Empty,
    Node(u32),
    /// An offset into the data section.
    Data(u32),
}

#[derive(Default)]
struct Tree {
    nodes: Vec<[Child; 2]>,
}

impl Tree {
    /// Points the network of the first `len` bits of `bits` at the data at `offset`.
    fn insert(&mut self, bits: u128, len: u32, offset: u32) {
        if self.nodes.is_empty() {
            self.nodes.push([Child::Empty; 2]);
        }
        let mut node = 0usize;
        for depth in 0..len {
            let side = ((bits >> (127 - depth)) & 1) as usize;
            if depth + 1 == len {
                self.nodes[node][side] = Child::Data(offset);
                return;
            }
            node = match self.nodes[node][side] {
                Child::Node(next) => next as usize,
                // A network inside one already mapped: the rest of the wider network keeps
                // its data on both sides of the new node.
                covering => {
                    let next = self.nodes.len();
                    let fill = match covering {
                        Child::Data(d) => Child::Data(d),
                        _ => Child::Empty,
                    };
                    self.nodes.push([fill; 2]);
                    self.nodes[node][side] = Child::Node(next as u32);
                    next
                }
            };
        }
    }
}

/// `"a.b.c.d/n"` or `"v6::/n"` as 128 bits (IPv4 under `::/96`) and a prefix length.
fn parse_network(net: &str) -> (u128, u32) {
    let (addr, len) = net.split_once('/').unwrap_or((net, ""));
    let ip: IpAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("`{net}` is not a network: {e}"));
    match ip {
        IpAddr::V4(v4) => {
            let len: u32 = if len.is_empty() {
                32
            } else {
                len.parse().unwrap()
            };
            assert!((1..=32).contains(&len), "`{net}`: prefix out of range");
            (u128::from(u32::from(v4)), 96 + len)
        }
        IpAddr::V6(v6) => {
            let len: u32 = if len.is_empty() {
                128
            } else {
                len.parse().unwrap()
            };
            assert!((1..=128).contains(&len), "`{net}`: prefix out of range");
            (u128::from(v6), len)
        }
    }
}

fn write_metadata(out: &mut Vec<u8>, node_count: u32) {
    write_map_header(out, 9);
    write_str(out, "binary_format_major_version");
    write_uint(out, 5, 2);
    write_str(out, "binary_format_minor_version");
    write_uint(out, 5, 0);
    write_str(out, "build_epoch");
    write_uint(out, 9, 1_700_000_000);
    write_str(out, "database_type");
    write_str(out, "GeoIP2-Country");
    write_str(out, "description");
    write_map_header(out, 1);
    write_str(out, "en");
    write_str(out, "graylane test country database");
    write_str(out, "ip_version");
    write_uint(out, 5, 6);
    write_str(out, "languages");
    write_control(out, 11, 1);
    write_str(out, "en");
    write_str(out, "node_count");
    write_uint(out, 6, u64::from(node_count));
    write_str(out, "record_size");
    write_uint(out, 5, 24);
}

/// A field's control byte(s): type (extended types after it) and size.
fn write_control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(
        size < 285 + 65_536,
        "a field of {size} is more than these tests write"
    );
    let bits = match size {
        0..=28 => size as u8,
        29..=284 => 29,
        _ => 30,
    };
    if kind <= 7 {
        out.push((kind << 5) | bits);
    } else {
        out.push(bits);
        out.push(kind - 7);
    }
    match size {
        0..=28 => {}
        29..=284 => out.push((size - 29) as u8),
        _ => out.extend_from_slice(&((size - 285) as u16).to_be_bytes()),
    }
}

fn write_map_header(out: &mut Vec<u8>, entries: usize) {
    write_control(out, 7, entries);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of type `kind` (5: uint16, 6: uint32, 9: uint64) in as few bytes as
/// it needs.
fn write_uint(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    write_control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn country(reader: &maxminddb::Reader<Vec<u8>>, ip: &str) -> Option<String> {
        reader
            .lookup(ip.parse().unwrap())
            .unwrap()
            .decode_path(&maxminddb::path!["country", "iso_code"])
            .unwrap()
    }

    #[test]
    fn the_maxmind_reader_finds_each_network_s_country() {
        let bytes = country_db(&[
            ("127.0.0.2/32", "DE"),
            ("127.0.0.3/32", "US"),
            ("10.0.0.0/8", "FR"),
            ("10.1.0.0/16", "DE"),
            ("2001:db8::/32", "JP"),
        ]);
        let reader = maxminddb::Reader::from_source(bytes).unwrap();
        reader.verify().unwrap();
        assert_eq!(reader.metadata().database_type, "GeoIP2-Country");
        assert_eq!(country(&reader, "127.0.0.2").as_deref(), Some("DE"));
        assert_eq!(country(&reader, "127.0.0.3").as_deref(), Some("US"));
        assert_eq!(country(&reader, "127.0.0.4"), None);
        assert_eq!(country(&reader, "10.200.0.1").as_deref(), Some("FR"));
        assert_eq!(country(&reader, "10.1.2.3").as_deref(), Some("DE"));
        assert_eq!(country(&reader, "2001:db8::1").as_deref(), Some("JP"));
        assert_eq!(country(&reader, "2001:db9::1"), None);
        let city: maxminddb::geoip2::Country<'_> = reader
            .lookup("127.0.0.2".parse().unwrap())
            .unwrap()
            .decode()
            .unwrap()
            .unwrap();
        assert_eq!(city.country.iso_code, Some("DE"));
    }

    #[test]
    fn the_file_written_opens_with_the_maxmind_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("country.mmdb");
        write_country_db(&path, &[("192.0.2.0/24", "NL")]).unwrap();
        let reader = maxminddb::Reader::open_readfile(&path).unwrap();
        assert_eq!(country(&reader, "192.0.2.77").as_deref(), Some("NL"));
    }
}
