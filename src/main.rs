//! The `tailcache` binary: `serve` (the build server and binary cache), `agent` (the local
//! peer-assisted substituter), `keygen`, and the client verbs of [`tailcache_cli`]
//! (`trigger`, `status`, `logs`, `switch`, `prefetch`, `completions`, `man`,
//! `bootstrap-new-machine`, `install-links`). Started as `bt`, `bs` or `bl` (links to it), it is
//! that program.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use tailcache_agent::{AgentConfig, AgentOverrides};
use tailcache_cli::{self as cli, Program, ServerArgs};
use tailcache_server::config::{Config, ServeOverrides};
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
    /// Trigger a build (as `bt`).
    Trigger {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: cli::TriggerArgs,
    },
    /// Show the build status (as `bs`).
    Status {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: cli::StatusArgs,
    },
    /// Show the build log (as `bl`).
    Logs {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: cli::LogsArgs,
    },
    /// Switch this machine to the generation the build server built for it.
    Switch {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: cli::switch::SwitchArgs,
    },
    /// Follow this machine's target on the build server: substitute each new ready
    /// generation in the background (and with --auto-switch apply it).
    Prefetch {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        args: cli::switch::prefetch::PrefetchArgs,
    },
    /// Print a shell completion script.
    Completions {
        shell: clap_complete::Shell,
        /// The program to complete.
        #[arg(long, value_enum, default_value = "tailcache")]
        program: cli::Program,
    },
    /// Write man pages (tailcache, bt, bs, bl and the subcommands) into a directory.
    Man { dir: PathBuf },
    /// Write a home-manager configuration for a new machine that uses this server.
    BootstrapNewMachine(cli::bootstrap::BootstrapArgs),
    /// Make `bt`, `bs` and `bl` links to this binary (after `cargo install`).
    InstallLinks(cli::links::InstallLinksArgs),
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
    pin_mmap_threshold();
    match Program::invoked_as(std::env::args_os().next().as_deref()) {
        Program::Bt => return cli::run_bt(),
        Program::Bs => return cli::run_bs(),
        Program::Bl => return cli::run_bl(),
        Program::Tailcache => {}
    }
    let cli = Cli::parse();
    let client = |r| cli::finish("tailcache", r);
    match cli.command {
        Command::Serve(_) | Command::Agent(_) | Command::Keygen(_) => {}
        Command::Trigger { server, args } => return client(cli::commands::trigger(&server, &args)),
        Command::Status { server, args } => return client(cli::commands::status(&server, &args)),
        Command::Logs { server, args } => return client(cli::commands::logs(&server, &args)),
        Command::Switch { server, args } => return client(cli::switch::run(&server, &args)),
        Command::Prefetch { server, args } => {
            return client(cli::switch::prefetch::run(&server, &args));
        }
        Command::Completions { shell, program } => {
            return client(cli::completions(shell, program, Cli::command()));
        }
        Command::Man { dir } => return client(cli::man_pages(&dir, Cli::command())),
        Command::BootstrapNewMachine(a) => return client(cli::bootstrap::run(&a)),
        Command::InstallLinks(a) => return client(cli::links::install(&a)),
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(o) => serve(&o),
        Command::Agent(o) => agent(&o),
        Command::Keygen(a) => keygen(&a),
        _ => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tailcache: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps large allocations out of glibc's per-thread arenas. By default glibc raises its mmap
/// threshold to the largest block freed so far (up to 32 MiB); after one xz job has freed its
/// 24 MiB buffers, every later 256 KiB body chunk then lives in arenas that are never given
/// back. benches/http-vs-nginx.sh measured the server's RSS at rest after compression at
/// 70–116 MiB that way, and at 26–35 MiB with the threshold fixed at 1 MiB (downloads
/// unaffected). A fixed threshold also switches off the dynamic adjustment.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; it is called first thing in main,
    // before any thread exists, and the value is a valid M_MMAP_THRESHOLD.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    if ok != 1 {
        eprintln!("tailcache: warning: could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}

fn serve(o: &ServeOverrides) -> anyhow::Result<()> {
    let config = Config::load(o)?;
    let system = actix::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime")
    });
    system.block_on(async move {
        let listeners = tailcache_server::server::Listeners {
            cache: bind(config.cache.bind).await?,
            api: bind(config.api.bind).await?,
        };
        tailcache_server::server::run(
            config,
            listeners,
            tailcache_server::server::shutdown_signal(),
        )
        .await
    })
}

fn agent(o: &AgentOverrides) -> anyhow::Result<()> {
    let config = AgentConfig::load(o)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let listener = bind(config.bind).await?;
        Ok(tailcache_agent::run(
            config,
            listener,
            tailcache_server::server::shutdown_signal(),
        )
        .await?)
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
