//! `lane-service --bind 127.0.0.1:8001 --name front --version canary --downstream
//! http://127.0.0.1:8080/back`: the example service (see the library's documentation).

use std::net::SocketAddr;

use clap::Parser;
use lane_service::Settings;

/// An example service behind graylane that keeps its outbound calls on its inbound lane.
#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8001")]
    bind: SocketAddr,
    /// The service's name.
    #[arg(long)]
    name: String,
    /// The version this instance runs.
    #[arg(long)]
    version: String,
    /// A URL through graylane to call for every request.
    #[arg(long)]
    downstream: Option<http::Uri>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    lane_service::serve(
        listener,
        Settings {
            name: args.name,
            version: args.version,
            downstream: args.downstream,
        },
    )
    .await
}
