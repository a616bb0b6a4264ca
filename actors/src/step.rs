//! Build steps: what a step is (a command with its environment and a timeout) and running
//! one as a child process in its own process group — output read line by line (long lines
//! split, invalid UTF-8 replaced) and forwarded to LogTail in batches through a bounded
//! channel, so a flood of output pushes back on the child instead of filling memory; on
//! timeout or cancel the group gets SIGTERM, then SIGKILL after a grace period.
//!
//! A step never outlives the server: its leader gets SIGKILL from the kernel when the
//! server dies (`PR_SET_PDEATHSIG`), and its group is recorded on disk while it runs
//! ([`crate::groups`]) so that what the leader started is killed at the next start-up.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::groups::StepGroups;
use crate::log_tail::{AppendLines, LogTail};
use crate::metrics::MeteredAddr;

/// What a step's output is also used for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Capture {
    #[default]
    Nothing,
    /// After the step succeeds, `git -C <dir> rev-parse HEAD` is the build's commit.
    Commit(PathBuf),
    /// Lines of the step's stdout that are absolute paths are the build's new store paths
    /// (e.g. the targets of `nix build`'s out-links).
    OutPaths,
    /// Every line of the step's stdout (what `nix eval` printed).
    Stdout,
    /// The derivations Nix reports failed on stderr (paths under this store directory).
    FailedDerivations(String),
}

impl Capture {
    /// What this capture keeps of one output line (`stdout`: from stdout, else stderr).
    fn keep(&self, stdout: bool, line: &str) -> Option<String> {
        match self {
            Capture::OutPaths if stdout && line.starts_with('/') => {
                Some(line.trim_end().to_owned())
            }
            Capture::Stdout if stdout => Some(line.to_owned()),
            Capture::FailedDerivations(store_dir) if !stdout => {
                crate::fleet::failures::failed_derivation(line, store_dir)
            }
            _ => None,
        }
    }
}

/// One command of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the server's environment.
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub capture: Capture,
}

impl Step {
    /// A step without environment, working directory, timeout or capture.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Step {
            name: name.into(),
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            cwd: None,
            timeout: None,
            capture: Capture::Nothing,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn capture(mut self, c: Capture) -> Self {
        self.capture = c;
        self
    }
}

/// Why a build is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancel,
    /// A trigger for a newer commit cancels the build (`supersede = true`).
    Superseded,
    Shutdown,
}

/// How a step ended.
#[derive(Debug)]
pub(crate) enum StepEnd {
    Exited(ExitStatus),
    TimedOut(Duration, ExitStatus),
    Stopped(StopReason, ExitStatus),
    SpawnFailed(std::io::Error),
}

/// Limits of one step run.
#[derive(Debug, Clone)]
pub(crate) struct RunLimits {
    pub max_line_bytes: usize,
    pub kill_grace: Duration,
    /// Where running steps' process groups are recorded (none in some tests).
    pub groups: Option<StepGroups>,
}

/// Lines per LogTail message; also the channel size between readers and forwarder.
const BATCH: usize = 512;
/// Captured lines kept for a step's `Capture`.
const MAX_CAPTURED: usize = 100_000;

/// Runs `step` to its end; returns how it ended and what its capture kept.
pub(crate) async fn run_step(
    step: &Step,
    build_id: u64,
    log: &MeteredAddr<LogTail>,
    stop: &mut watch::Receiver<Option<StopReason>>,
    limits: &RunLimits,
) -> (StepEnd, Vec<String>) {
    let mut cmd = Command::new(&step.program);
    cmd.args(&step.args)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &step.cwd {
        cmd.current_dir(dir);
    }
    die_with_server(&mut cmd);
    let mut child = match spawn(cmd).await {
        Ok(c) => c,
        Err(e) => return (StepEnd::SpawnFailed(e), Vec::new()),
    };
    // The child leads its own group (process_group(0)), so its pid is the group id.
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // Held until the group is gone; a crash before then leaves the record for start-up.
    let _recorded = match (&limits.groups, pgid) {
        (Some(groups), Some(pgid)) => groups
            .record(build_id, &step.name, pgid.as_raw())
            .inspect_err(|e| tracing::warn!("build {build_id}: {e}"))
            .ok(),
        _ => None,
    };

    let (tx, rx) = mpsc::channel::<(bool, String)>(BATCH);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, true, tx.clone(), limits.max_line_bytes));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, false, tx, limits.max_line_bytes));
    } else {
        drop(tx);
    }
    let forward = tokio::spawn(forward(rx, build_id, log.clone(), step.capture.clone()));

    let timeout = async {
        match step.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => StepEnd::Exited(s),
            Err(e) => StepEnd::SpawnFailed(e),
        },
        () = timeout => {
            let s = terminate(&mut child, pgid, limits.kill_grace).await;
            StepEnd::TimedOut(step.timeout.unwrap_or_default(), s)
        }
        reason = wait_stop(stop) => {
            let s = terminate(&mut child, pgid, limits.kill_grace).await;
            StepEnd::Stopped(reason, s)
        }
    };
    // Whatever the step left running in its group would hold the pipes open forever.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let captured = forward.await.unwrap_or_default();
    (end, captured)
}

/// Makes the kernel SIGKILL the step's leader when the server dies.
#[allow(unsafe_code)]
fn die_with_server(cmd: &mut Command) {
    let server = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: it makes two system calls (prctl,
    // getppid) and builds errors from raw codes, allocating nothing and taking no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The server died before the line above took effect: no signal will come.
            if nix::unistd::getppid() != server {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A spawn for the spawner thread, with the runtime the child is registered with.
struct SpawnRequest {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>,
}

/// Spawns `cmd` from a thread that lives as long as the process. `PR_SET_PDEATHSIG` fires
/// when the *thread* that forked the child ends, and a tokio worker thread may end before
/// the process does (`block_in_place` hands its core to a new thread).
async fn spawn(cmd: Command) -> std::io::Result<tokio::process::Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, mut rx) = mpsc::channel::<SpawnRequest>(16);
        std::thread::Builder::new()
            .name("step-spawner".to_owned())
            .spawn(move || {
                while let Some(mut req) = rx.blocking_recv() {
                    let _runtime = req.runtime.enter();
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .inspect_err(|e| tracing::error!("cannot start the step spawner thread: {e}"))
            .ok()
            .map(|_| tx)
    });
    let gone = || std::io::Error::other("the step spawner thread is gone");
    let spawner = spawner.as_ref().ok_or_else(gone)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = SpawnRequest {
        cmd,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    spawner.send(req).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

async fn wait_stop(stop: &mut watch::Receiver<Option<StopReason>>) -> StopReason {
    let reason = stop.wait_for(Option::is_some).await.ok().and_then(|r| *r);
    match reason {
        Some(r) => r,
        // The supervisor is gone: nobody will ever stop the build, so never fire.
        None => std::future::pending().await,
    }
}

/// SIGTERM to the group, SIGKILL after `grace`; returns the leader's exit status.
async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<Pid>,
    grace: Duration,
) -> ExitStatus {
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    if let Ok(Ok(s)) = tokio::time::timeout(grace, child.wait()).await {
        return s;
    }
    match pgid {
        Some(pgid) => {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        None => {
            let _ = child.start_kill();
        }
    }
    match child.wait().await {
        Ok(s) => s,
        // Cannot happen for a child we spawned and have not reaped; report a SIGKILL.
        Err(_) => std::os::unix::process::ExitStatusExt::from_raw(9),
    }
}

/// Reads lines of at most `max` bytes (longer ones are split) and sends them lossily
/// decoded; returns at EOF, on a read error, or when the forwarder is gone.
async fn read_lines(
    stream: impl AsyncRead + Unpin,
    stdout: bool,
    tx: mpsc::Sender<(bool, String)>,
    max: usize,
) {
    let max = max.max(1);
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot read build output: {e}");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = max - line.len();
        let window = &buf[..buf.len().min(room)];
        let (used, complete) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&window[..i]);
                (i + 1, true)
            }
            None => {
                line.extend_from_slice(window);
                (window.len(), line.len() == max)
            }
        };
        reader.consume(used);
        if complete {
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if tx.send((stdout, text)).await.is_err() {
                return;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx
            .send((stdout, String::from_utf8_lossy(&line).into_owned()))
            .await;
    }
}

/// Moves lines from the readers to LogTail in batches; waits for LogTail, so a slow log
/// pushes back on the readers and through the pipes on the child.
async fn forward(
    mut rx: mpsc::Receiver<(bool, String)>,
    build_id: u64,
    log: MeteredAddr<LogTail>,
    capture: Capture,
) -> Vec<String> {
    let mut captured = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut lines = Vec::with_capacity(batch.len());
        for (stdout, line) in batch.drain(..) {
            if captured.len() < MAX_CAPTURED
                && let Some(kept) = capture.keep(stdout, &line)
            {
                captured.push(kept);
            }
            lines.push(line);
        }
        if let Err(e) = log.ask(AppendLines { build_id, lines }).await {
            tracing::warn!("build log: {e}");
        }
    }
    captured
}
