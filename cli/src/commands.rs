//! The verbs: `trigger` (`bt`), `status` (`bs`) and `logs` (`bl`).

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tailcache_wire::build::{BuildResult, BuildStatus, TriggerOutcome};

use super::client::{CliError, Client};
use super::hosts::{self, TargetProgress};
use super::output::{self, Style};
use super::{LogsArgs, ServerArgs, StatusArgs, TriggerArgs, config, exit};

/// How often `--wait` and `--watch` ask for the status.
const POLL: Duration = Duration::from_millis(500);

/// Which build `--wait` waits for.
#[derive(Debug, Clone, Copy)]
enum Target {
    Build(u64),
    /// The build queued after this one (its id is not known yet).
    After(u64),
}

fn client(server: &ServerArgs) -> Result<Client, CliError> {
    Client::new(config::endpoint(server)?)
}

pub fn trigger(server: &ServerArgs, args: &TriggerArgs) -> Result<u8, CliError> {
    let client = client(server)?;
    let raw = client.trigger()?;
    let reply: TriggerOutcome =
        serde_json::from_value(raw.clone()).map_err(|e| CliError::BadReply {
            url: client.url().to_owned(),
            reason: format!("the trigger reply: {e}"),
        })?;
    let style = Style::stdout();
    if args.json {
        println!("{raw}");
    } else {
        print_trigger_outcome(&reply, &style);
    }
    if !args.wait {
        return Ok(exit::OK);
    }
    let target = match reply {
        TriggerOutcome::Triggered { build_id }
        | TriggerOutcome::AlreadyRunning { build_id, .. } => Target::Build(build_id),
        TriggerOutcome::Queued { after_build }
        | TriggerOutcome::Superseding {
            cancelled_build: after_build,
            ..
        } => Target::After(after_build),
        TriggerOutcome::ShuttingDown => {
            return Err(CliError::BadReply {
                url: client.url().to_owned(),
                reason: "the server is shutting down".to_owned(),
            });
        }
    };
    let (build_id, result) = wait_for(&client, target, !args.json)?;
    let targets = wait_for_targets(&client, build_id, !args.json)?;
    let all_ready = targets
        .iter()
        .all(|(_, p)| matches!(p, TargetProgress::Ready(_)));
    if args.json {
        println!("{}", build_end_json(build_id, result, &targets));
    } else {
        print_build_end(build_id, result, &targets, &style);
    }
    if result == BuildResult::Success && all_ready {
        Ok(exit::OK)
    } else {
        if !args.json && result != BuildResult::Success {
            // What a person needs next is the end of the log.
            if let Ok(lines) = client.logs(20) {
                for l in lines {
                    eprintln!("  {l}");
                }
            }
        }
        Ok(exit::BUILD_FAILED)
    }
}

/// The server's answer to a trigger, for a person.
fn print_trigger_outcome(reply: &TriggerOutcome, style: &Style) {
    match reply {
        TriggerOutcome::Triggered { build_id } => {
            println!("{} build {build_id} triggered", style.green("✓"));
        }
        TriggerOutcome::AlreadyRunning {
            build_id,
            since,
            requested_by,
        } => println!(
            "build {build_id} already running since {} (triggered by {})",
            output::clock(since),
            output::who(requested_by)
        ),
        TriggerOutcome::Queued { after_build } => {
            println!("build {after_build} is running; another build is queued to run after it")
        }
        TriggerOutcome::Superseding {
            cancelled_build,
            commit,
        } => println!(
            "build {cancelled_build} is being cancelled; a build of {commit} runs after it"
        ),
        // The server answers this one with 503, which `client.trigger()` already reports.
        TriggerOutcome::ShuttingDown => {}
    }
}

/// `trigger --wait --json`'s last line: the build's result and each target's state.
fn build_end_json(
    build_id: u64,
    result: BuildResult,
    targets: &[(String, TargetProgress)],
) -> serde_json::Value {
    let targets: Vec<serde_json::Value> = targets
        .iter()
        .map(|(name, p)| match p {
            TargetProgress::Ready(g) => {
                serde_json::json!({ "name": name, "state": "ready", "generation": g })
            }
            TargetProgress::Failed(why) => {
                serde_json::json!({ "name": name, "state": "failed", "error": why })
            }
            TargetProgress::Pending(w) => serde_json::json!({ "name": name, "state": w }),
        })
        .collect();
    serde_json::json!({
        "build_id": build_id,
        "result": result.as_str(),
        "targets": targets,
    })
}

/// `trigger --wait`'s end for a person: the build's result and each target's state.
fn print_build_end(
    build_id: u64,
    result: BuildResult,
    targets: &[(String, TargetProgress)],
    style: &Style,
) {
    let mark = if result == BuildResult::Success {
        style.green("✓")
    } else {
        style.red("✗")
    };
    println!("{mark} build {build_id} {}", style.result(result));
    for (name, p) in targets {
        match p {
            TargetProgress::Ready(Some(g)) => {
                println!("  {} {name}: generation {g} ready", style.green("✓"))
            }
            TargetProgress::Ready(None) => println!("  {} {name}: ready", style.green("✓")),
            TargetProgress::Failed(why) => println!("  {} {name}: {why}", style.red("✗")),
            TargetProgress::Pending(w) => println!("  {name}: {w}"),
        }
    }
}

/// After build `build_id` ended: polls `GET /hosts` until each of its targets is ready
/// (its closure servable) or failed. A server without targets ends at once.
fn wait_for_targets(
    client: &Client,
    build_id: u64,
    human: bool,
) -> Result<Vec<(String, TargetProgress)>, CliError> {
    let spinner = human.then(|| Spinner::new(output::stdout_is_tty()));
    let started = Instant::now();
    let mut shown = String::new();
    let done = loop {
        let Some(reply) = client.hosts()? else {
            break Vec::new();
        };
        let p = hosts::progress(&reply.hosts, build_id);
        if p.iter()
            .all(|(_, p)| !matches!(p, TargetProgress::Pending(_)))
        {
            break p;
        }
        let line = hosts::progress_line(&p);
        if let Some(s) = &spinner {
            s.show(
                &format!(
                    "build {build_id}: {line} · {}",
                    output::duration(started.elapsed().as_secs_f64())
                ),
                line != shown,
                &format!("build {build_id}: {line}"),
            );
        }
        shown = line;
        std::thread::sleep(POLL);
    };
    if let Some(s) = spinner {
        s.finish();
    }
    Ok(done)
}

/// Progress on a terminal (a spinner redrawn in place) or, on a pipe, one line per change.
struct Spinner {
    bar: Option<indicatif::ProgressBar>,
}

impl Spinner {
    fn new(tty: bool) -> Spinner {
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Spinner { bar }
    }

    /// `live` on a terminal; `line` on a pipe when `changed`.
    fn show(&self, live: &str, changed: bool, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(live.to_owned()),
            None if changed => {
                println!("{line}");
                let _ = std::io::stdout().flush();
            }
            None => {}
        }
    }

    fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Whether `target` is over in `s`, and how.
fn finished(s: &BuildStatus, target: Target) -> Option<(u64, BuildResult)> {
    s.history
        .iter()
        .find(|r| match target {
            Target::Build(id) => r.build_id == id,
            Target::After(id) => r.build_id > id,
        })
        .map(|r| (r.build_id, r.result))
}

/// Polls the status until the build ends; a spinner with step and elapsed time on a
/// terminal, one line per step otherwise.
fn wait_for(client: &Client, target: Target, human: bool) -> Result<(u64, BuildResult), CliError> {
    let spinner = human.then(|| Spinner::new(output::stdout_is_tty()));
    let started = Instant::now();
    let mut last_step: Option<String> = None;
    let outcome = loop {
        let s = client.status()?;
        if let Some(done) = finished(&s, target) {
            break done;
        }
        let ours = match target {
            Target::Build(id) => s.build_id == Some(id),
            Target::After(id) => s.build_id.is_some_and(|b| b > id),
        };
        let step = if ours && s.is_running {
            s.current_step.clone().unwrap_or_else(|| "starting".into())
        } else {
            "waiting for the running build".into()
        };
        let elapsed = if ours {
            output::elapsed_since(s.last_start.as_deref())
        } else {
            None
        }
        .unwrap_or_else(|| output::duration(started.elapsed().as_secs_f64()));
        let id = match target {
            Target::Build(id) => id.to_string(),
            Target::After(id) => format!("after {id}"),
        };
        if let Some(sp) = &spinner {
            sp.show(
                &format!("build {id}: {step} · {elapsed}"),
                last_step.as_deref() != Some(step.as_str()),
                &format!("build {id}: {step}"),
            );
        }
        last_step = Some(step);
        std::thread::sleep(POLL);
    };
    if let Some(sp) = spinner {
        sp.finish();
    }
    Ok(outcome)
}

pub fn status(server: &ServerArgs, args: &StatusArgs) -> Result<u8, CliError> {
    let client = client(server)?;
    let style = Style::stdout();
    if let Some(name) = &args.host {
        let Some(view) = client.host(name)? else {
            let known = client
                .hosts()?
                .map(|h| h.hosts.into_iter().map(|h| h.name).collect::<Vec<_>>())
                .unwrap_or_default();
            return Err(CliError::NotAvailable(format!(
                "the server builds no target named {name} (its targets: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        if args.json {
            println!("{}", to_json(&client, &view)?);
        } else {
            print!("{}", hosts::detail(&view, &style));
        }
        return Ok(exit::OK);
    }
    let s = client.status()?;
    if args.json {
        println!("{}", to_json(&client, &s)?);
        return Ok(exit::OK);
    }
    // The summary stands on its own: a per-host view that cannot be had is a note under it.
    let frame = |s: &BuildStatus| -> String {
        let mut text = output::summary(s, &style);
        match client.hosts() {
            Ok(Some(h)) if !h.hosts.is_empty() => {
                text.push('\n');
                text.push_str(&hosts::table(&h.hosts, &style));
            }
            Ok(_) => {}
            Err(e) => text.push_str(&format!("  (no per-host view: {e})\n")),
        }
        text
    };
    if !args.watch {
        print!("{}", frame(&s));
        return Ok(exit::OK);
    }
    let tty = output::stdout_is_tty();
    let mut shown = String::new();
    let mut s = s;
    loop {
        let text = frame(&s);
        if tty {
            // Redraw in place: home, clear to the end of the screen.
            print!("\x1b[H\x1b[J{text}");
            let _ = std::io::stdout().flush();
        } else if text != shown {
            print!("{text}");
            let _ = std::io::stdout().flush();
        }
        shown = text;
        if !s.is_running {
            break;
        }
        std::thread::sleep(if tty { Duration::from_secs(1) } else { POLL });
        s = client.status()?;
    }
    Ok(match s.last_status {
        None | Some(BuildResult::Success) => exit::OK,
        Some(_) => exit::BUILD_FAILED,
    })
}

fn to_json(client: &Client, v: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(v).map_err(|e| CliError::BadReply {
        url: client.url().to_owned(),
        reason: e.to_string(),
    })
}

/// The data of the `end` event.
#[derive(Debug, Deserialize)]
struct EndEvent {
    build_id: Option<u64>,
    result: Option<BuildResult>,
}

pub fn logs(server: &ServerArgs, args: &LogsArgs) -> Result<u8, CliError> {
    let client = client(server)?;
    let mut out = std::io::stdout().lock();
    if !args.follow {
        for l in client.logs(args.lines)? {
            if let Err(e) = writeln!(out, "{l}") {
                return closed_pipe_ok(e);
            }
        }
        return Ok(exit::OK);
    }
    let style = Style::stderr();
    let mut events = client.follow(args.lines)?;
    loop {
        let ev = events.next_event().map_err(|e| client.stream_error(e))?;
        let Some(ev) = ev else {
            return Err(CliError::Unreachable {
                url: client.url().to_owned(),
                reason: "the live log ended before the build did".to_owned(),
            });
        };
        match ev.event.as_str() {
            "end" => {
                let end: EndEvent =
                    serde_json::from_str(&ev.data).map_err(|e| CliError::BadReply {
                        url: client.url().to_owned(),
                        reason: format!("the end event: {e}"),
                    })?;
                let _ = out.flush();
                return Ok(match (end.build_id, end.result) {
                    (Some(id), Some(r)) => {
                        eprintln!("{}", style.dim(&format!("— build {id} {}", r.as_str())));
                        if r == BuildResult::Success {
                            exit::OK
                        } else {
                            exit::BUILD_FAILED
                        }
                    }
                    _ => {
                        eprintln!("{}", style.dim("— no build is running"));
                        exit::OK
                    }
                });
            }
            "lagged" => eprintln!(
                "{}",
                style.yellow(&format!(
                    "({} lines skipped: this client fell behind)",
                    ev.data
                ))
            ),
            _ => {
                if let Err(e) = writeln!(out, "{}", ev.data) {
                    return closed_pipe_ok(e);
                }
                // Live output shows each line as it arrives.
                let _ = out.flush();
            }
        }
    }
}

/// `bl | head` closes the pipe: that ends the command normally.
fn closed_pipe_ok(e: std::io::Error) -> Result<u8, CliError> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(exit::OK)
    } else {
        Err(CliError::local("writing the log", e))
    }
}
