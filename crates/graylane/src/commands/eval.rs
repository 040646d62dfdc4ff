//! `graylane eval`: route one imaginary request with the real rule engine and say why.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use graylane_rules::{KeyUsed, Reason, RequestView, RoutingTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

#[derive(Args)]
pub struct EvalArgs {
    /// The configuration file.
    #[arg(short, long, default_value = "graylane.yaml")]
    pub config: PathBuf,
    /// HTTP method, e.g. GET.
    pub method: String,
    /// Path with optional query, e.g. /api/payment/orders?x=1
    pub target: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The client's IP address (used by client_ip rules and as the fallback bucketing key).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Treat the client as a trusted hop, so its x-graylane-lane header and `trusted_only`
    /// keys and rules are honoured.
    #[arg(long)]
    pub trusted: bool,
    /// Where `serve` keeps its sticky-cookie key file, to verify a sticky cookie given with
    /// -H (GRAYLANE_COOKIE_KEYS, when set, is used instead). Nothing is created.
    #[arg(long, default_value = "graylane-data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let Some(config) = super::load_or_report(&args.config) else {
        return Ok(ExitCode::FAILURE);
    };
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("`{}` is not an HTTP method", args.method))?;
    let headers = parse_headers(&args.headers)?;
    let (path, query) = match args.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (args.target.as_str(), None),
    };
    if !path.starts_with('/') {
        bail!("the target `{}` must start with `/`", args.target);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h));
    let lane = if args.trusted {
        headers
            .get(graylane_proxy::X_GRAYLANE_LANE.clone())
            .and_then(|v| v.to_str().ok())
    } else {
        None
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let view = RequestView {
        method: &method,
        host,
        path,
        query,
        headers: &headers,
        client_ip: args.ip,
        now_unix_ms: now,
        trusted_lane: lane,
        trusted: args.trusted,
        // What the proxy draws for a new client without a bucketing key.
        random: now.unsigned_abs() as u32,
    };
    let mut table = RoutingTable::compile(&config);
    let env_keys = std::env::var(graylane_proxy::cookie_keys::ENV).ok();
    let key_file = args.data_dir.join(graylane_proxy::cookie_keys::FILE);
    if env_keys.as_deref().is_some_and(|k| !k.trim().is_empty()) || key_file.exists() {
        table.set_cookie_keys(&graylane_proxy::cookie_keys::load(
            env_keys.as_deref(),
            &args.data_dir,
        )?);
    }
    let Some(decision) = table.decide(&view) else {
        if args.json {
            println!(
                "{}",
                serde_json::json!({ "service": null, "version": null, "reason": "no_route" })
            );
        } else {
            println!("no service matches {method} {}", args.target);
        }
        return Ok(ExitCode::FAILURE);
    };
    let service = table.service_name(decision.service);
    let version = table.version_name(decision.service, decision.version);
    let why = table.explain(&view, &decision);
    // The cookie the proxy would set, so it can be replayed with `-H "Cookie: ..."`.
    let set_cookie = decision.pin.and_then(|bucket| {
        let value = table.sticky_value(decision.service, bucket)?;
        let sticky = config.services[decision.service]
            .release
            .as_ref()?
            .sticky
            .as_ref()?;
        Some(format!(
            "{}={}",
            sticky.cookie,
            String::from_utf8_lossy(value.as_bytes())
        ))
    });
    if args.json {
        let mut out = serde_json::json!({
            "service": service,
            "version": version,
            "reason": decision.reason.label(),
            "explanation": why,
        });
        match decision.reason {
            Reason::Forced { rule } => out["rule"] = rule.into(),
            Reason::Sticky { bucket, weight } => {
                out["bucket"] = bucket.into();
                out["weight_percent"] = weight.percent().into();
                out["key"] = "sticky_cookie".into();
            }
            Reason::Bucket {
                bucket,
                weight,
                key,
            } => {
                out["bucket"] = bucket.into();
                out["weight_percent"] = weight.percent().into();
                out["key"] = match key {
                    KeyUsed::Configured => "configured",
                    KeyUsed::FallbackIp => "fallback_ip",
                    KeyUsed::Random => "random",
                }
                .into();
            }
            _ => {}
        }
        if let Some(cookie) = &set_cookie {
            out["set_cookie"] = cookie.as_str().into();
        }
        println!("{out}");
    } else {
        println!("service: {service}");
        println!("version: {version}");
        println!("why:     {why}");
        if let Some(cookie) = &set_cookie {
            println!("cookie:  {cookie}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_headers(raw: &[String]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header `{h}` must look like `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("`{}` is not a valid header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .with_context(|| format!("the value of header `{name}` is not valid"))?;
        headers.append(name, value);
    }
    Ok(headers)
}
