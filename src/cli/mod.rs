//! The everyday client of the build server: `bt` (trigger), `bs` (status) and `bl` (logs),
//! also reachable as `tailcache trigger|status|logs`, plus `tailcache completions`,
//! `tailcache man` and `tailcache bootstrap-new-machine`. Speaks the build API of
//! `src/api/build.rs` (issue 4).
//!
//! # Layout
//! - [`config`]: where the server is (flag > env > config file > default) and the token.
//! - [`client`]: the HTTP client, and [`CliError`] with its documented exit codes.
//! - [`sse`]: a bounded, line-by-line Server-Sent Events reader.
//! - [`output`]: colours (NO_COLOR, non-TTY) and the human summaries.
//! - [`commands`]: the verbs.
//! - [`hosts`]: the per-host table and details (`bs`, `bs --host`) and closure diffs.
//! - [`switch`]: `tailcache switch`, which puts this machine on what the server built.
//! - [`bootstrap`]: `bootstrap-new-machine` and the Nix files it writes.
//! - [`links`]: `bt`, `bs`, `bl` as links to `tailcache`, and `tailcache install-links`.

pub mod bootstrap;
pub mod client;
pub mod commands;
pub mod config;
pub mod hosts;
pub mod links;
pub mod output;
pub mod sse;
pub mod switch;

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser};

pub use client::CliError;

/// Exit codes, as the README documents them.
pub mod exit {
    /// The command did what was asked (and a build it waited for succeeded).
    pub const OK: u8 = 0;
    /// The build failed, was cancelled or was interrupted.
    pub const BUILD_FAILED: u8 = 1;
    /// Wrong usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The server could not be reached: refused, DNS failure, timeout.
    pub const UNREACHABLE: u8 = 3;
    /// The server wants a (different) token.
    pub const UNAUTHORIZED: u8 = 4;
    /// The server answered with an error (5xx, or a reply the CLI does not understand).
    pub const SERVER_ERROR: u8 = 5;
    /// The server has no build configured.
    pub const NOT_CONFIGURED: u8 = 6;
    /// A local problem: a config file, writing files, a refused confirmation.
    pub const LOCAL: u8 = 7;
    /// `tailcache switch`: nothing to switch to — no such target, no ready generation, or
    /// the generation asked for is not kept.
    pub const NOT_AVAILABLE: u8 = 8;
    /// `tailcache switch`: the generation record was refused (not signed by a trusted key,
    /// tampered with, older than the one this machine applied); nothing changed.
    pub const REFUSED: u8 = 9;
    /// `tailcache switch`: Nix could not substitute the closure; nothing changed.
    pub const SUBSTITUTE_FAILED: u8 = 10;
    /// `tailcache switch`: setting the profile or running the activation failed.
    pub const ACTIVATION_FAILED: u8 = 11;
}

/// Options every client verb takes.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Build-server API URL [default: env TAILCACHE_SERVER, then `server` in
    /// $XDG_CONFIG_HOME/tailcache/config.toml, then http://build-server:8000].
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// Seconds to wait for the server to connect and to answer.
    #[arg(
        long,
        value_name = "SECS",
        env = "TAILCACHE_TIMEOUT",
        default_value_t = 10.0,
        global = true
    )]
    pub timeout: f64,
}

/// `bt`: trigger a build.
#[derive(Debug, Clone, Args)]
pub struct TriggerArgs {
    /// Follow the build until every target it built is ready or failed; exit 0 only if the
    /// build succeeded and every target is ready.
    #[arg(short, long)]
    pub wait: bool,
    /// Print the server's JSON reply instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `bs`: show the build status.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print the raw status model as JSON (GET /build/status); with --host, that host's
    /// view (GET /hosts/NAME).
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Show one host in detail: kept generations, what changed, the last outcome.
    #[arg(long, value_name = "NAME", conflicts_with = "watch")]
    pub host: Option<String>,
    /// Refresh the summary until the running build ends.
    #[arg(short, long)]
    pub watch: bool,
}

/// `bl`: show the build log.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// How many of the last lines to print.
    #[arg(short = 'n', long = "lines", default_value_t = 50)]
    pub lines: usize,
    /// Follow the live log until the build ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// `bt`
#[derive(Debug, Parser)]
#[command(
    name = "bt",
    version,
    about = "Trigger a build on the tailcache build server"
)]
pub struct BtCli {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub args: TriggerArgs,
}

/// `bs`
#[derive(Debug, Parser)]
#[command(
    name = "bs",
    version,
    about = "Show the status of the tailcache build server"
)]
pub struct BsCli {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub args: StatusArgs,
}

/// `bl`
#[derive(Debug, Parser)]
#[command(name = "bl", version, about = "Show the log of the tailcache build")]
pub struct BlCli {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub args: LogsArgs,
}

/// Ends the process with the command's outcome: the error on one line, no backtrace.
pub fn finish(prog: &str, result: Result<u8, CliError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let style = output::Style::stderr();
            eprintln!("{prog}: {} {e}", style.red("error:"));
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn run_bt() -> ExitCode {
    let cli = BtCli::parse();
    finish("bt", commands::trigger(&cli.server, &cli.args))
}

pub fn run_bs() -> ExitCode {
    let cli = BsCli::parse();
    finish("bs", commands::status(&cli.server, &cli.args))
}

pub fn run_bl() -> ExitCode {
    let cli = BlCli::parse();
    finish("bl", commands::logs(&cli.server, &cli.args))
}

/// The programs `completions` and `man` know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    Tailcache,
    Bt,
    Bs,
    Bl,
}

/// The clap command of `program`; `tailcache` is the caller's (it lives in `main.rs`).
pub fn command_of(program: Program, tailcache: clap::Command) -> clap::Command {
    match program {
        Program::Tailcache => tailcache,
        Program::Bt => BtCli::command(),
        Program::Bs => BsCli::command(),
        Program::Bl => BlCli::command(),
    }
}

/// `tailcache completions SHELL [--program P]`: the completion script on stdout.
pub fn completions(
    shell: clap_complete::Shell,
    program: Program,
    tailcache: clap::Command,
) -> Result<u8, CliError> {
    let mut cmd = command_of(program, tailcache);
    let name = cmd.get_name().to_owned();
    // Into memory first: clap_complete panics on a write error (a closed pipe).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    write_stdout(&script)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> Result<u8, CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(CliError::local("writing to stdout", e)),
    }
}

/// `tailcache man DIR`: `tailcache.1`, `bt.1`, `bs.1`, `bl.1` and the subcommands' pages.
pub fn man_pages(dir: &std::path::Path, tailcache: clap::Command) -> Result<u8, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::local(format!("{}", dir.display()), e))?;
    for program in [Program::Tailcache, Program::Bt, Program::Bs, Program::Bl] {
        let cmd = command_of(program, tailcache.clone());
        clap_mangen::generate_to(cmd, dir)
            .map_err(|e| CliError::local(format!("writing man pages to {}", dir.display()), e))?;
    }
    Ok(exit::OK)
}
