//! The `tailcache` binary: `serve` (the build server and binary cache), `agent` (the local
//! peer-assisted substituter) and `keygen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tailcache::config::{AgentOverrides, Config, ServeOverrides};
use tailcache_store::signing::SecretKey;

#[derive(Debug, Parser)]
#[command(
    name = "tailcache",
    version,
    about = "Build server and Nix binary cache for a tailnet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the binary cache and the build server.
    Serve(ServeOverrides),
    /// Run the local substituter that fetches NARs from peers (the `[agent]` section).
    Agent(AgentOverrides),
    /// Generate a signing key pair in Nix's format.
    Keygen(KeygenArgs),
}

#[derive(Debug, clap::Args)]
struct KeygenArgs {
    /// Key name clients see, e.g. `myhost-tailcache-1`.
    name: String,
    /// Where to write the secret key (created with mode 0600; never overwritten).
    secret_key_file: PathBuf,
    /// Where to write the public key.
    public_key_file: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(o) => serve(&o),
        Command::Agent(o) => agent(&o),
        Command::Keygen(a) => keygen(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailcache: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(o: &ServeOverrides) -> anyhow::Result<()> {
    let config = Config::load(o)?;
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    });
    system.block_on(async move {
        let listeners = tailcache::server::Listeners {
            cache: bind(config.cache.bind).await?,
            api: bind(config.api.bind).await?,
        };
        tailcache::server::run(config, listeners, tailcache::server::shutdown_signal()).await
    })
}

fn agent(o: &AgentOverrides) -> anyhow::Result<()> {
    let config = Config::load_agent(o)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let listener = bind(config.bind).await?;
        tailcache::agent::run(config, listener, tailcache::server::shutdown_signal()).await
    })
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<()> {
    let key = SecretKey::generate(&a.name)?;
    key.write_new(&a.secret_key_file)
        .with_context(|| format!("cannot write {}", a.secret_key_file.display()))?;
    let public = key.public().to_nix_string();
    std::fs::write(&a.public_key_file, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", a.public_key_file.display()))?;
    println!("{public}");
    Ok(())
}
