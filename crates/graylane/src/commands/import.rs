//! `graylane fleet import`: moves a single node to fleet mode by copying its store
//! (`--data-dir`) into etcd — every revision, release state and audit entry with its number —
//! so that `graylane serve --etcd` nodes resume its releases where it left them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use graylane_etcd::Etcd;
use graylane_etcd::import::{EnvData, import};
use graylane_store::{AuditFilter, RedbStore, Store, StoreError};

/// The store file `graylane serve --data-dir DIR` keeps in DIR.
const STORE_FILE: &str = "graylane.redb";

#[derive(Subcommand)]
pub(crate) enum FleetCommand {
    /// Copy a stopped single node's revisions, releases and audit log into etcd.
    Import(ImportArgs),
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// The single node's data directory (its `graylane serve --data-dir`). The node must be
    /// stopped: its store is locked while it runs.
    #[arg(long)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub etcd: super::fleet::EtcdArgs,
    /// Import only this environment (default: every environment the data directory holds).
    #[arg(long)]
    pub env: Option<String>,
}

pub(crate) fn run(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Import(args) => run_import(args),
    }
}

fn run_import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = open_stopped(&args.data_dir)?;
    let held = store.environments()?;
    let envs = match &args.env {
        Some(env) if held.contains(env) => vec![env.clone()],
        Some(env) => bail!(
            "{} holds no environment `{env}`; it holds: {}",
            args.data_dir.display(),
            list(&held)
        ),
        None if held.is_empty() => bail!(
            "{} holds no environment: nothing to import",
            args.data_dir.display()
        ),
        None => held,
    };
    let mut data = Vec::with_capacity(envs.len());
    for env in envs {
        data.push(read_env(&store, env)?);
    }
    let cookie_keys = read_cookie_keys(&args.data_dir)?;
    let etcd = Etcd::connect(&args.etcd.options(Duration::from_secs(5))?)?;
    let imported = import(&etcd, &data, cookie_keys.as_deref())?;
    for (done, env) in imported.iter().zip(&data) {
        let last_revision = env.revisions.iter().map(|r| r.n).max();
        let last_audit = env.audit.iter().map(|e| e.seq).max();
        println!(
            "imported environment {}: {} revision{} (newest {}), {} release{}, {} audit entr{} (newest {}){}",
            done.env,
            done.revisions,
            plural(done.revisions, "", "s"),
            last_revision.map_or_else(|| "-".to_string(), |n| n.to_string()),
            done.releases,
            plural(done.releases, "", "s"),
            done.audit,
            plural(done.audit, "y", "ies"),
            last_audit.map_or_else(|| "-".to_string(), |n| n.to_string()),
            if done.cookie_keys {
                ", and the cookie keys"
            } else {
                ""
            },
        );
    }
    println!(
        "into etcd at {} under {}; start the fleet with `graylane serve --etcd {} --etcd-prefix {} --env ENV --node NAME`",
        etcd.endpoints(),
        etcd.prefix(),
        etcd.endpoints(),
        etcd.prefix()
    );
    Ok(ExitCode::SUCCESS)
}

/// The single node's store, opened only if it exists (opening creates a missing one) and only
/// while no node runs on it (its lock says so).
fn open_stopped(dir: &Path) -> anyhow::Result<RedbStore> {
    let file = dir.join(STORE_FILE);
    let size = std::fs::metadata(&file).map(|m| m.len()).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}; --data-dir must name a single node's data directory (the one `graylane serve --data-dir` used)",
            file.display()
        )
    })?;
    if size == 0 {
        bail!(
            "{} is empty: it is not a graylane store, nothing to import",
            file.display()
        );
    }
    match RedbStore::open(dir) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { path }) => bail!(
            "{} is in use by a running graylane: stop the single node (`graylane serve --data-dir {}`) before importing, so that nothing changes during the copy",
            path.display(),
            dir.display()
        ),
        Err(e) => Err(e.into()),
    }
}

fn read_env(store: &RedbStore, env: String) -> anyhow::Result<EnvData> {
    let mut revisions = Vec::new();
    for meta in store.revisions(&env)? {
        let revision = store
            .revision(&env, meta.n)?
            .with_context(|| format!("revision {} of `{env}` is listed but unreadable", meta.n))?;
        revisions.push(revision);
    }
    Ok(EnvData {
        releases: store.releases(&env)?,
        audit: store.audit_matching(&env, &AuditFilter::default(), usize::MAX)?,
        revisions,
        env,
    })
}

/// The single node's sticky-cookie keys, so cookies it signed stay valid on the fleet.
fn read_cookie_keys(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join(graylane_proxy::cookie_keys::FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = text.trim().to_string();
            graylane_rules::CookieKeys::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

fn list(envs: &[String]) -> String {
    if envs.is_empty() {
        "none".to_string()
    } else {
        envs.join(", ")
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
