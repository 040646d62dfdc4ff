//! The GeoIP country database that `country` rules look the client address up in: a MaxMind
//! DB file (GeoIP2 / GeoLite2 Country or City, or any database whose records carry
//! `country.iso_code`), read once into memory and shared read-only, so a lookup does no I/O,
//! takes no lock and allocates nothing.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// A MaxMind DB file held in memory, answering "which country is this address in".
pub struct CountryDb {
    /// The file's bytes, kept beside the reader to tell two reads of the file apart.
    bytes: Arc<[u8]>,
    reader: maxminddb::Reader<Arc<[u8]>>,
}

impl CountryDb {
    /// Reads the MaxMind DB at `path`; the error says why it is not one (unreadable, not the
    /// format, damaged).
    pub fn open(path: &Path) -> Result<CountryDb, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        CountryDb::from_bytes(bytes)
            .map_err(|e| format!("{} is not a usable MaxMind DB: {e}", path.display()))
    }

    /// A database from a MaxMind DB file's bytes, checked whole (search tree, data section,
    /// metadata) so a damaged file is refused here rather than failing lookups later.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<CountryDb, String> {
        let bytes: Arc<[u8]> = bytes.into();
        let reader =
            maxminddb::Reader::from_source(Arc::clone(&bytes)).map_err(|e| e.to_string())?;
        reader.verify().map_err(|e| e.to_string())?;
        Ok(CountryDb { bytes, reader })
    }

    /// The ISO 3166-1 code of the country `ip` is in (`country.iso_code` of its record), or
    /// `None` when the database has no record for it or the record names no country. An
    /// IPv4-mapped IPv6 address is looked up as its IPv4 address. Allocates nothing.
    pub fn country(&self, ip: IpAddr) -> Option<&str> {
        self.reader
            .lookup(ip.to_canonical())
            .ok()?
            .decode_path::<&str>(&maxminddb::path!["country", "iso_code"])
            .ok()
            .flatten()
    }

    /// The database's type from its metadata, e.g. `GeoLite2-Country`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

impl PartialEq for CountryDb {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl std::fmt::Debug for CountryDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountryDb")
            .field("database_type", &self.database_type())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}
