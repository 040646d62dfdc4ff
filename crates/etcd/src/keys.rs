//! Where graylane keeps things in etcd: one place for the layout, which `graylane fleet import`,
//! the registry and people reading etcd with `etcdctl` rely on.
//!
//! ```text
//! {prefix}/schema                      {"graylane_schema": 1}, written once; another value is refused
//! {prefix}/env/{env}/meta              {"env": "{env}"}: whose keys these are
//! {prefix}/env/{env}/revision          the newest revision's number, in decimal
//! {prefix}/env/{env}/revisions/{n}     a revision without its document (JSON), n zero-padded
//! {prefix}/env/{env}/documents/{n}     the revision's YAML
//! {prefix}/env/{env}/releases/{name}   a release's state (the controller's JSON)
//! {prefix}/env/{env}/audit-seq         the newest audit entry's number, in decimal
//! {prefix}/env/{env}/audit/{seq}       an audit entry (JSON), seq zero-padded
//! {prefix}/env/{env}/cookie-keys       the sticky-cookie signing keys, shared by every node
//! {prefix}/env/{env}/leader            the leading node's name, under its lease
//! {prefix}/env/{env}/members/{node}    a node's membership record (JSON), under its lease
//! {prefix}/env/{env}/reports/{node}    a node's traffic counters (JSON), under its lease
//! {prefix}/registry/{service}/{id}     a service instance (JSON), under the instance's lease
//! ```
//!
//! Numbers are zero-padded to 20 digits so that etcd's byte order is their numeric order.

/// The layout version written at `{prefix}/schema`.
pub const SCHEMA: u64 = 1;

/// The keys of one environment under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    env_root: String,
}

impl Keys {
    /// The keys of `env` under `prefix` (a trailing `/` is ignored).
    pub fn new(prefix: &str, env: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/').to_string();
        let env_root = format!("{prefix}/env/{env}/");
        Keys { prefix, env_root }
    }

    /// The prefix everything lives under.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}/schema`: the layout version, `{"graylane_schema": 1}`.
    pub fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }

    /// Everything of every environment (for listing environments).
    pub fn envs(&self) -> String {
        format!("{}/env/", self.prefix)
    }

    /// Everything of this environment: what a node watches.
    pub fn env(&self) -> &str {
        &self.env_root
    }

    /// `meta`: `{"env": ENV}`, saying whose keys these are.
    pub fn meta(&self) -> String {
        format!("{}meta", self.env_root)
    }

    /// `revision`: the newest revision's number, in decimal.
    pub fn latest_revision(&self) -> String {
        format!("{}revision", self.env_root)
    }

    /// Every revision's record (without its document).
    pub fn revisions(&self) -> String {
        format!("{}revisions/", self.env_root)
    }

    /// Revision `n`'s record: its metadata as JSON, without the document.
    pub fn revision(&self, n: u64) -> String {
        format!("{}revisions/{n:020}", self.env_root)
    }

    /// Every revision's document.
    pub fn documents(&self) -> String {
        format!("{}documents/", self.env_root)
    }

    /// Revision `n`'s YAML document.
    pub fn document(&self, n: u64) -> String {
        format!("{}documents/{n:020}", self.env_root)
    }

    /// Every release's state.
    pub fn releases(&self) -> String {
        format!("{}releases/", self.env_root)
    }

    /// The release state of `service`, as the controller's JSON.
    pub fn release(&self, service: &str) -> String {
        format!("{}releases/{service}", self.env_root)
    }

    /// `audit-seq`: the newest audit entry's number, in decimal.
    pub fn audit_seq(&self) -> String {
        format!("{}audit-seq", self.env_root)
    }

    /// Every audit entry.
    pub fn audits(&self) -> String {
        format!("{}audit/", self.env_root)
    }

    /// Audit entry `seq`, as JSON.
    pub fn audit(&self, seq: u64) -> String {
        format!("{}audit/{seq:020}", self.env_root)
    }

    /// `cookie-keys`: the sticky-cookie signing keys every node of the fleet shares.
    pub fn cookie_keys(&self) -> String {
        format!("{}cookie-keys", self.env_root)
    }

    /// `leader`: the leading node's name, under its lease.
    pub fn leader(&self) -> String {
        format!("{}leader", self.env_root)
    }

    /// Every node's membership record.
    pub fn members(&self) -> String {
        format!("{}members/", self.env_root)
    }

    /// The membership record of `node` (JSON), under its lease.
    pub fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.env_root)
    }

    /// Every node's traffic report.
    pub fn reports(&self) -> String {
        format!("{}reports/", self.env_root)
    }

    /// The traffic counters `node` publishes (JSON), under its lease.
    pub fn report(&self, node: &str) -> String {
        format!("{}reports/{node}", self.env_root)
    }

    /// Every registered instance of every service.
    pub fn registry(&self) -> String {
        format!("{}/registry/", self.prefix)
    }

    /// What an environment key is, from its bytes (the watch hands out keys).
    pub fn classify<'k>(&self, key: &'k str) -> Option<EnvKey<'k>> {
        let rest = key.strip_prefix(self.env_root.as_str())?;
        let number = |s: &str| s.parse::<u64>().ok();
        Some(if rest == "revision" {
            EnvKey::LatestRevision
        } else if let Some(name) = rest.strip_prefix("releases/") {
            EnvKey::Release(name)
        } else if rest == "leader" {
            EnvKey::Leader
        } else if let Some(node) = rest.strip_prefix("members/") {
            EnvKey::Member(node)
        } else if let Some(node) = rest.strip_prefix("reports/") {
            EnvKey::Report(node)
        } else if let Some(n) = rest.strip_prefix("revisions/").and_then(number) {
            EnvKey::Revision(n)
        } else {
            EnvKey::Other
        })
    }
}

/// An environment key, as [`Keys::classify`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvKey<'k> {
    /// `revision`: the newest revision's number.
    LatestRevision,
    /// `revisions/{n}`: revision `n`'s record.
    Revision(u64),
    /// `releases/{service}`: that service's release state.
    Release(&'k str),
    /// `leader`: who leads the fleet.
    Leader,
    /// `members/{node}`: that node's membership record.
    Member(&'k str),
    /// `reports/{node}`: that node's traffic report.
    Report(&'k str),
    /// Any other key of the environment (documents, audit, meta, cookie keys).
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_sort_as_their_numbers() {
        let k = Keys::new("/graylane/", "prod");
        assert_eq!(
            k.revision(9),
            "/graylane/env/prod/revisions/00000000000000000009"
        );
        assert!(k.audit(9) < k.audit(10));
        assert!(k.audit(99_999) < k.audit(100_000));
    }

    #[test]
    fn keys_are_classified_only_inside_their_environment() {
        let k = Keys::new("/graylane", "prod");
        assert_eq!(k.classify(&k.release("web")), Some(EnvKey::Release("web")));
        assert_eq!(k.classify(&k.member("a")), Some(EnvKey::Member("a")));
        assert_eq!(
            k.classify(&k.latest_revision()),
            Some(EnvKey::LatestRevision)
        );
        assert_eq!(k.classify(&k.revision(3)), Some(EnvKey::Revision(3)));
        assert_eq!(k.classify(&k.audit(3)), Some(EnvKey::Other));
        let staging = Keys::new("/graylane", "prod-eu");
        assert_eq!(k.classify(&staging.release("web")), None);
    }
}
