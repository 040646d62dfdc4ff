//! `graylane eval`: route one imaginary request with the real rule engine and say why — against
//! a configuration file (its releases at their first step), or with `--admin` against a running
//! gateway's live state (current weights, `set-weight` overrides, Redis segment members) through
//! `POST /api/v1/eval`. [`evaluate`] is the one implementation both use.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use graylane_api::{EvalAnswer, EvalRequest};
use graylane_config::{Config, EscapedSlashes};
use graylane_rules::{KeyUsed, Reason, RequestView, RoutingTable};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::client::{AdminArgs, Client};

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// The configuration file (ignored with --admin).
    #[arg(short, long, default_value = "graylane.yaml")]
    pub config: PathBuf,
    /// Ask a running gateway's admin API instead, e.g. http://127.0.0.1:9900: the answer
    /// reflects its live weights, overrides and segment members. A token is read from
    /// GRAYLANE_TOKEN (role viewer).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// HTTP method, e.g. GET.
    pub method: String,
    /// Path with optional query, e.g. /api/payment/orders?x=1
    pub target: String,
    /// A request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The client's IP address (used by client_ip rules, looked up in the `geoip:` database for
    /// country rules, and the fallback bucketing key).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Treat the client as a trusted hop, so its x-graylane-lane header and `trusted_only`
    /// keys and rules are honoured.
    #[arg(long)]
    pub trusted: bool,
    /// Where `serve` keeps its sticky-cookie key file, to verify a sticky cookie given with
    /// -H (GRAYLANE_COOKIE_KEYS, when set, is used instead). Nothing is created. Ignored with
    /// --admin, where the gateway's own keys are used.
    #[arg(long, default_value = "graylane-data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let request = EvalRequest {
        method: args.method.clone(),
        target: args.target.clone(),
        headers: args.headers.clone(),
        ip: args.ip,
        trusted: args.trusted,
    };
    let answer = match &args.admin {
        Some(url) => {
            let client = Client::new(&AdminArgs {
                url: url.clone(),
                json: args.json,
            });
            let body = serde_json::to_value(&request)?;
            serde_json::from_value(client.post("/api/v1/eval", &[], Some(&body))?)
                .context("the admin API answered eval in a shape this graylane does not know")?
        }
        None => {
            let Some(config) = super::load_or_report(&args.config) else {
                return Ok(ExitCode::FAILURE);
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
            evaluate(&table, &config, &request, now_ms())?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        match (&answer.service, &answer.version) {
            (Some(service), Some(version)) => {
                println!("service: {service}");
                println!("version: {version}");
                println!("why:     {}", answer.explanation.as_deref().unwrap_or(""));
                if let Some(country) = &answer.country {
                    println!("country: {country} (GeoIP database)");
                }
                if let Some(cookie) = &answer.set_cookie {
                    println!("cookie:  {cookie}");
                }
            }
            _ => println!(
                "no service matches {} {}",
                request.method.to_ascii_uppercase(),
                request.target
            ),
        }
    }
    Ok(if answer.service.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn now_ms() -> i64 {
    crate::admin::api::now_ms()
}

/// Routes `request` with `table` (compiled from `config`) at `now_unix_ms`, seeing its path in
/// the normal form the proxy matches on; an error says which part of the request is not valid.
pub(crate) fn evaluate(
    table: &RoutingTable,
    config: &Config,
    request: &EvalRequest,
    now_unix_ms: i64,
) -> anyhow::Result<EvalAnswer> {
    let method = Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("`{}` is not an HTTP method", request.method))?;
    let headers = parse_headers(&request.headers)?;
    let (path, query) = match request.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.target.as_str(), None),
    };
    if !path.starts_with('/') {
        bail!("the target `{}` must start with `/`", request.target);
    }
    let path = graylane_rules::path::normalize(path, EscapedSlashes::Reject)
        .map_err(|e| anyhow::anyhow!("the gateway would refuse this path: {}", e.describe()))?;
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(':').next().unwrap_or(h));
    let lane = if request.trusted {
        headers
            .get(graylane_proxy::X_GRAYLANE_LANE.clone())
            .and_then(|v| v.to_str().ok())
    } else {
        None
    };
    // A trusted client's X-Forwarded-For is read behind any listener's trusted hops.
    let trusted_hops: Vec<_> = config
        .listeners
        .iter()
        .flat_map(|l| l.trusted_hops.iter().copied())
        .collect();
    let view = RequestView {
        method: &method,
        host,
        path: &path,
        query,
        headers: &headers,
        client_ip: request.ip,
        now_unix_ms,
        trusted_lane: lane,
        trusted: request.trusted,
        trusted_hops: &trusted_hops,
        // What the proxy draws for a new client without a bucketing key.
        random: now_unix_ms.unsigned_abs() as u32,
    };
    let Some(decision) = table.decide(&view) else {
        return Ok(EvalAnswer {
            service: None,
            version: None,
            reason: "no_route".to_string(),
            explanation: None,
            rule: None,
            bucket: None,
            weight_percent: None,
            key: None,
            set_cookie: None,
            country: table.geoip_country(&view).map(str::to_string),
        });
    };
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
    let mut answer = EvalAnswer {
        service: Some(table.service_name(decision.service).to_string()),
        version: Some(
            table
                .version_name(decision.service, decision.version)
                .to_string(),
        ),
        reason: decision.reason.label().to_string(),
        explanation: Some(table.explain(&view, &decision)),
        rule: None,
        bucket: None,
        weight_percent: None,
        key: None,
        set_cookie,
        country: table.geoip_country(&view).map(str::to_string),
    };
    match decision.reason {
        Reason::Forced { rule } => answer.rule = Some(rule),
        Reason::Sticky { bucket, weight } => {
            answer.bucket = Some(bucket);
            answer.weight_percent = Some(weight.percent());
            answer.key = Some("sticky_cookie".to_string());
        }
        Reason::Bucket {
            bucket,
            weight,
            key,
        } => {
            answer.bucket = Some(bucket);
            answer.weight_percent = Some(weight.percent());
            answer.key = Some(
                match key {
                    KeyUsed::Configured => "configured",
                    KeyUsed::FallbackIp => "fallback_ip",
                    KeyUsed::Random => "random",
                }
                .to_string(),
            );
        }
        _ => {}
    }
    Ok(answer)
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
