//! `geoip:`: the MaxMind database is read and checked whole here, so a missing or damaged
//! file is an error of the configuration that names it.

use std::sync::Arc;

use super::Validator;
use crate::model::*;
use crate::raw::*;

impl Validator<'_> {
    pub(super) fn geoip(&mut self, raw: &RawGeoIp) -> Option<GeoIp> {
        if raw.database.trim().is_empty() {
            self.fail(
                "geoip.database",
                "needs the path of a MaxMind DB file, e.g. GeoLite2-Country.mmdb",
            );
            return None;
        }
        let database = self.base_dir.join(&raw.database);
        match crate::CountryDb::open(&database) {
            Ok(db) => Some(GeoIp {
                database,
                countries: Arc::new(db),
            }),
            Err(e) => {
                self.fail("geoip.database", e);
                None
            }
        }
    }
}
