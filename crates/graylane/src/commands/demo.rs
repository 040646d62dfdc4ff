//! `graylane demo`: two tiny built-in upstreams (stable and canary) on loopback, a gateway in
//! front of them with a sample canary release, and the `curl` lines to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Args;
use graylane_proxy::GatewayOptions;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::serve::{ConfigSource, Prepared, run_gateway};
use crate::logging::{self, LogColor, LogFormat};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Port of the gateway on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Port of the admin listener (metrics) on 127.0.0.1.
    #[arg(long, default_value_t = 9900)]
    pub admin_port: u16,
    /// Weight of the canary, in percent.
    #[arg(long, default_value_t = 10.0)]
    pub weight: f64,
}

const DEMO_CONFIG: &str = r#"
listeners:
  - bind: 127.0.0.1:{port}
admin:
  bind: 127.0.0.1:{admin_port}
segments:
  staff:
    values: ["u-1001", "u-1002"]
services:
  - name: payment
    match: { path_prefix: /api/payment }
    versions:
      stable: { endpoints: ["{stable}"] }
      canary: { endpoints: ["{canary}"], tag: v1.2.0 }
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      force:
        - header: { name: X-Release-Phase, equals: canary }
        - segment: { name: staff, key: "header:X-User-Id" }
      bucket_by: "header:X-User-Id"
      sticky: { cookie: graylane_lane }
      steps:
        - weight: {weight}
          pause: manual
        - weight: 100
"#;

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    logging::init(LogFormat::Text, LogColor::Auto, "warn");
    let (stable, canary) = start_upstreams()?;
    let yaml = DEMO_CONFIG
        .replace("{port}", &args.port.to_string())
        .replace("{admin_port}", &args.admin_port.to_string())
        .replace("{stable}", &stable.to_string())
        .replace("{canary}", &canary.to_string())
        .replace("{weight}", &args.weight.to_string());
    let config = graylane_config::load_str(&yaml, "<demo>", std::path::Path::new("."))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let base = format!("http://127.0.0.1:{}/api/payment/orders", args.port);
    println!(
        "graylane demo: gateway on 127.0.0.1:{}, admin on 127.0.0.1:{}",
        args.port, args.admin_port
    );
    println!(
        "  stable upstream {stable}, canary upstream {canary}; canary weight {}%\n",
        args.weight
    );
    println!("Try:");
    println!(
        "  curl -i {base} -H 'X-Release-Phase: canary'   # forced to the canary (test traffic)"
    );
    println!("  curl -i {base} -H 'X-User-Id: u-1001'         # a staff user: always the canary");
    println!(
        "  curl -i {base} -H \"X-User-Id: u-$RANDOM\"       # a random user: {}% chance of canary, sticky",
        args.weight
    );
    println!(
        "  curl -s 127.0.0.1:{}/metrics | grep graylane_requests",
        args.admin_port
    );
    println!("\nCtrl-C to stop.");
    let prepared = Prepared::bind(&config, GatewayOptions::default(), Vec::new(), None)?;
    run_gateway(prepared, config, ConfigSource::Fixed)
}

/// Starts both demo upstreams on a background thread; returns their addresses.
fn start_upstreams() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (tx, rx) = std::sync::mpsc::channel();
    crate::runtime::thread("graylane-demo-upstreams", move || {
        let runtime = match crate::runtime::control_plane() {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(anyhow::Error::from(e)));
                return;
            }
        };
        runtime.block_on(async move {
            let bound = async {
                let stable = TcpListener::bind("127.0.0.1:0").await?;
                let canary = TcpListener::bind("127.0.0.1:0").await?;
                anyhow::Ok((stable, canary))
            }
            .await;
            match bound {
                Ok((stable, canary)) => {
                    let addrs = (stable.local_addr(), canary.local_addr());
                    let _ = tx.send(match addrs {
                        (Ok(a), Ok(b)) => Ok((a, b)),
                        (Err(e), _) | (_, Err(e)) => Err(e.into()),
                    });
                    tokio::join!(upstream(stable, "stable"), upstream(canary, "canary"));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
    })?;
    rx.recv()?
}

/// A demo upstream: answers every request with a line of JSON naming its version.
async fn upstream(listener: TcpListener, version: &'static str) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                let lane = req
                    .headers()
                    .get("x-graylane-lane")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let body = serde_json::json!({
                    "version": version,
                    "message": format!("hello from the {version} version"),
                    "path": req.uri().path(),
                    "lane": lane,
                });
                let mut resp = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
