//! Metrics every actor reports, defined once: messages handled, handler latency and mailbox
//! depth per actor and message type, restarts per actor, and build counts and durations by
//! result. [`metered`] is the single place a handler is timed, counted and guarded against
//! panics; [`MeteredAddr`] is the single place a send is counted into the mailbox depth, and
//! [`MeteredAddr::start`] the one place an actor is started, supervised, with its mailbox
//! bounded.
//! Exposed in the Prometheus text format by the root crate (`GET /metrics`).

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tailcache_metrics::{Prefixed, ResultLabels};

use crate::error::{Error, Result};
use crate::status::BuildResult;

/// Labels of the per-message families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub actor: &'static str,
    pub message: &'static str,
}

/// Labels of the per-actor families.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabels {
    pub actor: &'static str,
}

/// A family of histograms, each made with the family's bucket layout (`handler_histogram`,
/// `build_histogram`).
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn handler_histogram() -> Histogram {
    // 50 µs … 13 s: handlers are meant to be quick; the top buckets show the ones that aren't.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
}

fn build_histogram() -> Histogram {
    // 1 s … 4.5 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// The actor families; cheap to clone (the families are shared).
#[derive(Debug, Clone)]
pub struct ActorMetrics {
    handled: Family<MessageLabels, Counter>,
    duration: Histograms<MessageLabels>,
    depth: Family<MessageLabels, Gauge>,
    restarts: Family<ActorLabels, Counter>,
}

impl ActorMetrics {
    fn register(registry: &mut Registry) -> Self {
        // Counters get their `_total` suffix from the encoder.
        let mut r = Prefixed::new(registry, "tailcache_actor");
        ActorMetrics {
            handled: r.add(
                "messages_handled",
                "Messages handled, by actor and message type",
                Family::default(),
            ),
            duration: r.add(
                "handler_duration_seconds",
                "Time spent in message handlers, by actor and message type",
                Family::new_with_constructor(handler_histogram),
            ),
            depth: r.add(
                "mailbox_depth",
                "Messages sent but not yet handled, by actor and message type",
                Family::default(),
            ),
            restarts: r.add(
                "restarts",
                "Actor restarts after a failed handler, by actor",
                Family::default(),
            ),
        }
    }

    /// Makes an actor's restart counter visible (at 0) before its first restart.
    pub fn declare(&self, actor: &'static str) {
        let _ = self.restarts.get_or_create(&ActorLabels { actor });
    }

    /// Counts one restart of `actor`; called from `Supervised::restarting`.
    pub fn restarted(&self, actor: &'static str) {
        self.restarts.get_or_create(&ActorLabels { actor }).inc();
    }

    /// How often `actor` has been restarted.
    pub fn restarts(&self, actor: &'static str) -> u64 {
        self.restarts.get_or_create(&ActorLabels { actor }).get()
    }

    /// How many `message`s `actor` has handled.
    pub fn handled(&self, actor: &'static str, message: &'static str) -> u64 {
        self.handled
            .get_or_create(&MessageLabels { actor, message })
            .get()
    }

    fn depth(&self, actor: &'static str, message: &'static str) -> Gauge {
        self.depth
            .get_or_create(&MessageLabels { actor, message })
            .clone()
    }
}

/// Build counts and durations by result.
#[derive(Debug, Clone)]
pub struct BuildMetrics {
    builds: Family<ResultLabels, Counter>,
    duration: Histograms<ResultLabels>,
}

impl BuildMetrics {
    fn register(registry: &mut Registry) -> Self {
        let mut r = Prefixed::new(registry, "tailcache");
        let m = BuildMetrics {
            builds: r.add("builds", "Builds finished, by result", Family::default()),
            duration: r.add(
                "build_duration_seconds",
                "Wall time of finished builds, by result",
                Family::new_with_constructor(build_histogram),
            ),
        };
        for result in BuildResult::ALL {
            let _ = m.builds.get_or_create(&ResultLabels {
                result: result.as_str(),
            });
        }
        m
    }

    /// Records one finished build.
    pub fn finished(&self, result: BuildResult, seconds: f64) {
        let labels = ResultLabels {
            result: result.as_str(),
        };
        self.builds.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// How many builds ended with `result`.
    pub fn count(&self, result: BuildResult) -> u64 {
        self.builds
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .get()
    }
}

/// All metrics of this crate, registered in the registry the root crate exposes.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub actors: ActorMetrics,
    pub builds: BuildMetrics,
}

impl Metrics {
    /// Registers every family in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Metrics {
            actors: ActorMetrics::register(registry),
            builds: BuildMetrics::register(registry),
        }
    }
}

/// Content type of [`encode_text`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `registry` in the classic Prometheus text format (0.0.4) served at `/metrics`.
///
/// prometheus-client writes OpenMetrics, where a counter family is named without its
/// `_total` suffix and the text ends with `# EOF`; the classic format, which `promtool
/// check metrics` and older scrapers parse, names the family like its samples and has no
/// `# EOF` or `# UNIT`. Everything else is the same in both.
pub fn encode_text(registry: &Registry) -> Result<String> {
    let mut open = String::new();
    prometheus_client::encoding::text::encode(&mut open, registry)?;
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 64);
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}

/// An actor whose handlers go through [`metered`] and whose sends go through [`MeteredAddr`].
pub trait Metered: Actor<Context = Context<Self>> {
    /// The `actor` label.
    const NAME: &'static str;
    /// Messages its mailbox holds; a send beyond waits ([`MeteredAddr::ask`]) or is refused.
    const MAILBOX_CAPACITY: usize;
    fn actor_metrics(&self) -> &ActorMetrics;
}

/// A message type's name without its module path: the `message` label.
pub fn message_name<M>() -> &'static str {
    let full = type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Runs one handler body: counts and times it, and turns a panic into
/// [`Error::Panicked`] plus a stop of the context, after which `actix::Supervisor`
/// restarts the actor (its `restarting` counts the restart) with its mailbox intact.
pub fn metered<A, M, T>(
    act: &mut A,
    ctx: &mut Context<A>,
    msg: M,
    body: impl FnOnce(&mut A, M, &mut Context<A>) -> T,
) -> Result<T>
where
    A: Metered,
{
    let labels = MessageLabels {
        actor: A::NAME,
        message: message_name::<M>(),
    };
    let metrics = act.actor_metrics().clone();
    metrics.depth.get_or_create(&labels).dec();
    let started = Instant::now();
    // The state may be half-updated after a panic; `restarting` is where each actor
    // re-establishes its invariants, so asserting unwind safety here is sound.
    let outcome = catch_unwind(AssertUnwindSafe(|| body(act, msg, ctx)));
    metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics.handled.get_or_create(&labels).inc();
    match outcome {
        Ok(v) => Ok(v),
        Err(_) => {
            tracing::error!(
                "{} panicked handling {}; restarting",
                A::NAME,
                labels.message
            );
            ctx.stop();
            Err(Error::Panicked {
                actor: A::NAME,
                message: labels.message,
            })
        }
    }
}

/// An `Addr` that counts what it sends into the mailbox-depth gauge.
#[derive(Debug)]
pub struct MeteredAddr<A: Metered> {
    addr: Addr<A>,
    metrics: ActorMetrics,
}

impl<A: Metered> Clone for MeteredAddr<A> {
    fn clone(&self) -> Self {
        MeteredAddr {
            addr: self.addr.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<A: Metered> MeteredAddr<A> {
    /// Starts `actor` under `actix::Supervisor` (restarted after a failed handler, its mailbox
    /// kept) on the current actix system, with its mailbox bounded from the first message on.
    pub fn start(actor: A) -> Self
    where
        A: Supervised,
    {
        let metrics = actor.actor_metrics().clone();
        let addr = Supervisor::start(move |ctx: &mut Context<A>| {
            ctx.set_mailbox_capacity(A::MAILBOX_CAPACITY);
            actor
        });
        MeteredAddr::new(addr, metrics)
    }

    pub fn new(addr: Addr<A>, metrics: ActorMetrics) -> Self {
        metrics.declare(A::NAME);
        MeteredAddr { addr, metrics }
    }

    /// Whether the actor can still receive messages.
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    /// Sends `msg` and waits for its answer (waiting for mailbox space if it is full).
    pub async fn ask<M, T>(&self, msg: M) -> Result<T>
    where
        M: Message<Result = Result<T>> + Send + 'static,
        T: Send + 'static,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let depth = self.metrics.depth(A::NAME, message_name::<M>());
        depth.inc();
        match self.addr.send(msg).await {
            Ok(r) => r,
            Err(MailboxError::Closed) => {
                depth.dec();
                Err(Error::ActorGone { actor: A::NAME })
            }
            // The message was delivered and is handled (and counted) even though the
            // answer no longer arrives.
            Err(MailboxError::Timeout) => Err(Error::ActorGone { actor: A::NAME }),
        }
    }

    /// Queues `msg` even when the mailbox is full (for the few messages that must not be
    /// lost and must keep their order, e.g. a build's end); fails only if the actor is gone.
    pub fn force<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        self.metrics.depth(A::NAME, message_name::<M>()).inc();
        self.addr.do_send(msg);
    }

    /// Sends `msg` without waiting; fails when the mailbox is full.
    pub fn tell<M>(&self, msg: M) -> Result<()>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let depth = self.metrics.depth(A::NAME, message_name::<M>());
        depth.inc();
        self.addr.try_send(msg).map_err(|e| {
            depth.dec();
            match e {
                SendError::Full(_) => Error::MailboxFull { actor: A::NAME },
                SendError::Closed(_) => Error::ActorGone { actor: A::NAME },
            }
        })
    }
}
