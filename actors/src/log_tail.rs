//! LogTail: owns the build log. Every line goes to the build's file
//! `<state_dir>/logs/build-<unix ms>-<id>.log` (the newest `files_kept` are kept), into a
//! ring buffer of the last lines (`GET /build/logs?lines=N`), and to live followers through
//! a bounded broadcast channel: a follower that falls behind is told how many lines it
//! skipped (`RecvError::Lagged`) and never slows the build down.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::metrics::{ActorMetrics, Metered, MeteredAddr, metered};
use crate::status::BuildResult;
use crate::time::unix_millis;

/// Appends one line to a build's log; a failure is logged, never fatal to the build.
pub(crate) async fn say(log: &MeteredAddr<LogTail>, build_id: u64, line: String) {
    let msg = AppendLines {
        build_id,
        lines: vec![line],
    };
    if let Err(e) = log.ask(msg).await {
        tracing::warn!("build log: {e}");
    }
}

/// Messages that may wait in LogTail's mailbox. Each carries a batch of lines.
pub const MAILBOX_CAPACITY: usize = 64;

/// What followers receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// A build started; its lines follow.
    Started {
        build_id: u64,
    },
    Line(Arc<str>),
    /// The build ended; no more lines of it will come.
    Ended {
        build_id: u64,
        result: BuildResult,
    },
}

/// Sizes of the log's buffers.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Lines kept in memory for `GetLines`.
    pub ring_lines: usize,
    /// Log files kept on disk.
    pub files_kept: usize,
    /// Events a follower may fall behind before it skips lines.
    pub follower_buffer: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            ring_lines: 10_000,
            files_kept: 20,
            follower_buffer: 4096,
        }
    }
}

/// The actor.
#[derive(Debug)]
pub struct LogTail {
    dir: PathBuf,
    limits: LogLimits,
    ring: VecDeque<Arc<str>>,
    file: Option<(u64, PathBuf, BufWriter<File>)>,
    events: broadcast::Sender<LogEvent>,
    metrics: ActorMetrics,
}

impl LogTail {
    /// Creates `<state_dir>/logs`.
    pub fn open(state_dir: &Path, limits: LogLimits, metrics: ActorMetrics) -> Result<Self> {
        let dir = state_dir.join("logs");
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let (events, _) = broadcast::channel(limits.follower_buffer.max(1));
        Ok(LogTail {
            dir,
            limits,
            ring: VecDeque::with_capacity(limits.ring_lines.min(65_536)),
            file: None,
            events,
            metrics,
        })
    }

    /// Appends `line` to build `build_id`'s log file, if it is still kept, and to the ring
    /// (start-up only: the build is over and no file is open).
    pub fn note(&mut self, build_id: u64, line: &str) -> Result<()> {
        let suffix = format!("-{build_id}.log");
        let file = Self::log_files(&self.dir)?.into_iter().rev().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        });
        if let Some(path) = file {
            let append = fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut f| writeln!(f, "{line}").and_then(|()| f.sync_data()));
            append.map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        self.push(line.into());
        Ok(())
    }

    /// Log files, oldest first (the names sort by start time).
    pub fn log_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let entries = fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot list {}", dir.display()), e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("build-") && n.ends_with(".log"))
            })
            .collect();
        files.sort();
        Ok(files)
    }

    fn prune(&self) -> Result<()> {
        let files = Self::log_files(&self.dir)?;
        let excess = files.len().saturating_sub(self.limits.files_kept);
        for f in &files[..excess] {
            fs::remove_file(f)
                .map_err(|e| Error::io(format!("cannot remove {}", f.display()), e))?;
        }
        Ok(())
    }

    fn push(&mut self, line: Arc<str>) {
        if self.limits.ring_lines == 0 {
            return;
        }
        if self.ring.len() == self.limits.ring_lines {
            self.ring.pop_front();
        }
        self.ring.push_back(line);
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.ring.len().saturating_sub(n);
        self.ring.iter().skip(skip).map(|l| l.to_string()).collect()
    }

    fn close_file(&mut self) -> Result<()> {
        if let Some((_, path, mut w)) = self.file.take() {
            w.flush()
                .and_then(|()| w.get_ref().sync_data())
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
        }
        Ok(())
    }
}

impl Actor for LogTail {
    type Context = Context<Self>;
}

impl Supervised for LogTail {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.metrics.restarted(Self::NAME);
    }
}

impl Metered for LogTail {
    const NAME: &'static str = "LogTail";
    const MAILBOX_CAPACITY: usize = MAILBOX_CAPACITY;
    fn actor_metrics(&self) -> &ActorMetrics {
        &self.metrics
    }
}

/// A build starts: opens its log file and prunes old ones.
#[derive(Debug, Message)]
#[rtype(result = "Result<PathBuf>")]
pub struct BeginLog {
    pub build_id: u64,
}

/// Lines of output, in order.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct AppendLines {
    pub build_id: u64,
    pub lines: Vec<String>,
}

/// The build ended: flushes and closes its file and tells followers.
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct EndLog {
    pub build_id: u64,
    pub result: BuildResult,
}

/// The last `n` lines (at most the ring's size).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<String>>")]
pub struct GetLines {
    pub n: usize,
}

/// The current tail and a receiver of everything after it (no line lost or repeated
/// between the two, since the actor answers both at once).
#[derive(Debug, Message)]
#[rtype(result = "Result<(Vec<String>, broadcast::Receiver<LogEvent>)>")]
pub struct Follow {
    pub n: usize,
}

/// Flushes the open log file (at shutdown).
#[derive(Debug, Message)]
#[rtype(result = "Result<()>")]
pub struct FlushLog;

impl Handler<BeginLog> for LogTail {
    type Result = Result<PathBuf>;
    fn handle(&mut self, msg: BeginLog, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            this.close_file()?;
            this.ring.clear();
            let path = this
                .dir
                .join(format!("build-{:013}-{}.log", unix_millis(), msg.build_id));
            let file = File::create(&path)
                .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
            this.file = Some((
                msg.build_id,
                path.clone(),
                BufWriter::with_capacity(64 << 10, file),
            ));
            if let Err(e) = this.prune() {
                tracing::warn!("{e}");
            }
            let _ = this.events.send(LogEvent::Started {
                build_id: msg.build_id,
            });
            Ok(path)
        })?
    }
}

impl Handler<AppendLines> for LogTail {
    type Result = Result<()>;
    fn handle(&mut self, msg: AppendLines, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            let mut write_err = None;
            for line in msg.lines {
                if let Some((id, path, w)) = &mut this.file
                    && *id == msg.build_id
                    && write_err.is_none()
                    && let Err(e) = w
                        .write_all(line.as_bytes())
                        .and_then(|()| w.write_all(b"\n"))
                {
                    write_err = Some(Error::io(format!("cannot write {}", path.display()), e));
                }
                let line: Arc<str> = line.into();
                this.push(line.clone());
                // No receivers is fine: nobody follows.
                let _ = this.events.send(LogEvent::Line(line));
            }
            // One write per batch keeps the file close to live without a syscall per line.
            if let Some((_, path, w)) = &mut this.file
                && write_err.is_none()
                && let Err(e) = w.flush()
            {
                write_err = Some(Error::io(format!("cannot write {}", path.display()), e));
            }
            write_err.map_or(Ok(()), Err)
        })?
    }
}

impl Handler<EndLog> for LogTail {
    type Result = Result<()>;
    fn handle(&mut self, msg: EndLog, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            let closed = match &this.file {
                Some((id, ..)) if *id == msg.build_id => this.close_file(),
                _ => Ok(()),
            };
            let _ = this.events.send(LogEvent::Ended {
                build_id: msg.build_id,
                result: msg.result,
            });
            closed
        })?
    }
}

impl Handler<GetLines> for LogTail {
    type Result = Result<Vec<String>>;
    fn handle(&mut self, msg: GetLines, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| this.tail(msg.n))
    }
}

impl Handler<Follow> for LogTail {
    type Result = Result<(Vec<String>, broadcast::Receiver<LogEvent>)>;
    fn handle(&mut self, msg: Follow, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, msg, _| {
            (this.tail(msg.n), this.events.subscribe())
        })
    }
}

impl Handler<FlushLog> for LogTail {
    type Result = Result<()>;
    fn handle(&mut self, msg: FlushLog, ctx: &mut Self::Context) -> Self::Result {
        metered(self, ctx, msg, |this, _, _| match &mut this.file {
            Some((_, path, w)) => w
                .flush()
                .map_err(|e| Error::io(format!("cannot write {}", path.display()), e)),
            None => Ok(()),
        })?
    }
}
