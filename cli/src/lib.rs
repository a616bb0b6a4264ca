//! The everyday client of the build server: `bt` (trigger), `bs` (status) and `bl` (logs),
//! also reachable as `tailcache trigger|status|logs`, plus `tailcache completions`,
//! `tailcache man` and `tailcache bootstrap-new-machine`. Speaks the build API of
//! `server/src/api/build.rs`.
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

use clap::{Args, CommandFactory, FromArgMatches, Parser};

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
    /// Build-server API URL [default: env TAILCACHE_SERVER, then `server` in the config
    /// file, then http://build-server:8000].
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// The client config file [default: $XDG_CONFIG_HOME/tailcache/config.toml when it
    /// exists, else /etc/tailcache/config.toml].
    #[arg(
        long,
        value_name = "FILE",
        env = "TAILCACHE_CLIENT_CONFIG",
        global = true
    )]
    pub config: Option<std::path::PathBuf>,
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

/// `bt`, `bs` or `bl`: the options every client verb takes and the verb's own (`A`).
#[derive(Debug, Parser)]
#[command(version)]
pub struct ShortCli<A: Args> {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub args: A,
}

/// The clap command of a short program, named and described as `program`.
fn short_command<A: Args>(program: Program) -> clap::Command {
    ShortCli::<A>::command()
        .name(program.name())
        .about(program.about())
}

/// Parses this process's arguments as `program` and runs `verb` with them.
fn run_short<A: Args + FromArgMatches>(
    program: Program,
    verb: fn(&ServerArgs, &A) -> Result<u8, CliError>,
) -> ExitCode {
    let matches = short_command::<A>(program).get_matches();
    let cli = ShortCli::<A>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    finish(program.name(), verb(&cli.server, &cli.args))
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
    run_short::<TriggerArgs>(Program::Bt, commands::trigger)
}

pub fn run_bs() -> ExitCode {
    run_short::<StatusArgs>(Program::Bs, commands::status)
}

pub fn run_bl() -> ExitCode {
    run_short::<LogsArgs>(Program::Bl, commands::logs)
}

/// The programs `completions` and `man` know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    Tailcache,
    Bt,
    Bs,
    Bl,
}

impl Program {
    /// The program's command name.
    pub fn name(self) -> &'static str {
        match self {
            Program::Tailcache => "tailcache",
            Program::Bt => "bt",
            Program::Bs => "bs",
            Program::Bl => "bl",
        }
    }

    /// What `--help` says the program does.
    fn about(self) -> &'static str {
        match self {
            Program::Tailcache => "Build server and Nix binary cache for a tailnet",
            Program::Bt => "Trigger a build on the tailcache build server",
            Program::Bs => "Show the status of the tailcache build server",
            Program::Bl => "Show the log of the tailcache build",
        }
    }
}

/// The clap command of `program`; `tailcache` is the caller's (it lives in `main.rs`).
pub fn command_of(program: Program, tailcache: clap::Command) -> clap::Command {
    match program {
        Program::Tailcache => tailcache,
        Program::Bt => short_command::<TriggerArgs>(program),
        Program::Bs => short_command::<StatusArgs>(program),
        Program::Bl => short_command::<LogsArgs>(program),
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
