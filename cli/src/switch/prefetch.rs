//! `tailcache prefetch`: keeps a machine current without evaluating anything. It looks at
//! its target on the build server every `--interval` seconds (`GET /hosts/<name>`; after a
//! failure it waits twice as long each time, up to [`MAX_BACKOFF`]) and, when the newest ready
//! generation is not in the store yet, verifies its signed record exactly as `tailcache switch`
//! does and has Nix substitute its closure (through the machine's substituters: the local
//! agent first when there is one), rooted next to the applied-generations file so garbage
//! collection keeps it until it is applied. `tailcache switch` then has nothing left to
//! download. With `--auto-switch ACTION` it also applies each new generation (the switch
//! itself, with its refusals); `--once` looks once and exits. The modules run it as a service
//! at idle CPU and I/O priority.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tailcache_store::signing::PublicKey;

use super::decide;
use super::{Action, Follow, SwitchArgs, TargetArgs};
use crate::client::CliError;
use crate::hosts::bytes;
use crate::output;
use crate::{ServerArgs, exit};

/// The longest wait between two looks after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// `tailcache prefetch`.
#[derive(Debug, Clone, Args)]
pub struct PrefetchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seconds between two looks at the server (after a failure twice as long each time, up
    /// to 15 minutes).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub interval: u64,
    /// Look once, substitute what is new, and exit.
    #[arg(long)]
    pub once: bool,
    /// Also apply each new generation, as `tailcache switch --action ACTION` (for a
    /// home-manager target: `switch`, which activates it).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub auto_switch: Option<Action>,
}

/// When to look next: the interval after a success, doubling after each failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let base = base.max(Duration::from_secs(1));
        Backoff {
            base,
            max: max.max(base),
            current: base,
        }
    }

    pub fn success(&mut self) -> Duration {
        self.current = self.base;
        self.current
    }

    pub fn failure(&mut self) -> Duration {
        self.current = (self.current * 2).min(self.max);
        self.current
    }
}

/// What one look found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// The target has no ready generation yet.
    NothingReady(String),
    /// The newest ready generation was in the store already.
    Present { generation: u64, out_path: String },
    /// It was substituted now.
    Fetched {
        generation: u64,
        out_path: String,
        took: Duration,
    },
}

impl Look {
    fn out_path(&self) -> Option<&str> {
        match self {
            Look::NothingReady(_) => None,
            Look::Present { out_path, .. } | Look::Fetched { out_path, .. } => Some(out_path),
        }
    }

    /// What a log line about it would be about: a steady state is reported once.
    fn topic(&self) -> &str {
        match self {
            Look::NothingReady(m) => m,
            Look::Present { out_path, .. } | Look::Fetched { out_path, .. } => out_path,
        }
    }
}

/// Whether following goes on after `e` (the server or Nix may do better next time), or the
/// set-up is wrong and only a person can fix it.
pub fn is_fatal(e: &CliError) -> bool {
    matches!(e, CliError::Usage(_) | CliError::Config(_))
}

pub fn run(server: &ServerArgs, args: &PrefetchArgs) -> Result<u8, CliError> {
    let follow = Follow::new(server, &args.target)?;
    let trusted = follow.trusted_keys(&args.target)?;
    follow.require_sigs()?;
    let root = gc_root(&args.target, &follow.name);
    let mut backoff = Backoff::new(Duration::from_secs(args.interval), MAX_BACKOFF);
    // What was last reported and the out path last handed to the switch, so a steady state
    // is quiet.
    let mut reported: Option<String> = None;
    let mut switched: Option<String> = None;
    println!(
        "following {} on {} every {}",
        follow.name,
        follow.client.url(),
        output::duration(args.interval as f64)
    );
    loop {
        let (found, wait) = match look(&follow, args, &trusted, root.as_ref()) {
            Ok(l) => {
                if reported.as_deref() != Some(l.topic()) {
                    report(&follow.name, &l);
                    reported = Some(l.topic().to_owned());
                }
                (Some(l), backoff.success())
            }
            Err(e) if is_fatal(&e) || args.once => return Err(e),
            Err(e) => {
                let wait = backoff.failure();
                eprintln!(
                    "{}: {e}; next look in {}",
                    follow.name,
                    output::duration(wait.as_secs_f64())
                );
                (None, wait)
            }
        };
        if let (Some(action), Some(out)) =
            (args.auto_switch, found.as_ref().and_then(Look::out_path))
            && switched.as_deref() != Some(out)
        {
            // The switch verifies the record again and applies it, or refuses (an older
            // generation than the one applied, say) and leaves everything as it is.
            let mut target = args.target.clone();
            target.host = Some(follow.name.clone());
            match super::run(server, &SwitchArgs::of(target, action)) {
                Ok(_) => switched = Some(out.to_owned()),
                Err(e) if is_fatal(&e) || args.once => return Err(e),
                Err(e) => eprintln!("{}: the switch failed: {e}", follow.name),
            }
        }
        if args.once {
            return Ok(exit::OK);
        }
        std::thread::sleep(wait);
    }
}

/// One look: the newest ready generation, verified, in the store.
fn look(
    follow: &Follow,
    args: &PrefetchArgs,
    trusted: &[PublicKey],
    root: Option<&PathBuf>,
) -> Result<Look, CliError> {
    let view = follow.view(args.target.home)?;
    let g = match decide::select(&view, None) {
        Ok(g) => g,
        Err(CliError::NotAvailable(m)) => return Ok(Look::NothingReady(m)),
        Err(e) => return Err(e),
    };
    let (record, _key) = decide::verify(&view, g, trusted)?;
    if follow.nix.is_valid(&record.out_path) {
        return Ok(Look::Present {
            generation: record.generation,
            out_path: record.out_path,
        });
    }
    println!(
        "{}: generation {} is ready ({} paths, {}); substituting {}",
        record.target,
        record.generation,
        record.closure_paths,
        bytes(record.closure_nar_size),
        record.out_path
    );
    let started = Instant::now();
    follow
        .nix
        .realise(&record.out_path, root.map(PathBuf::as_path))?;
    Ok(Look::Fetched {
        generation: record.generation,
        out_path: record.out_path,
        took: started.elapsed(),
    })
}

fn report(name: &str, l: &Look) {
    match l {
        Look::NothingReady(m) => println!("{name}: nothing to fetch yet: {m}"),
        Look::Present {
            generation,
            out_path,
        } => println!("{name}: generation {generation} is in the store ({out_path})"),
        Look::Fetched {
            generation, took, ..
        } => println!(
            "{name}: generation {generation} substituted in {}; `tailcache switch` has nothing \
             left to download",
            output::duration(took.as_secs_f64())
        ),
    }
}

/// The GC root of the prefetched closure: `prefetched-<target>` next to the
/// applied-generations file (none when there is no place for that file).
fn gc_root(t: &TargetArgs, name: &str) -> Option<PathBuf> {
    let state = t.state_path().ok()?;
    Some(state.parent()?.join(format!("prefetched-{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(60), MAX_BACKOFF);
        assert_eq!(b.failure(), Duration::from_secs(120));
        assert_eq!(b.failure(), Duration::from_secs(240));
        for _ in 0..10 {
            b.failure();
        }
        assert_eq!(b.failure(), MAX_BACKOFF);
        assert_eq!(b.success(), Duration::from_secs(60));
        assert_eq!(b.failure(), Duration::from_secs(120));
        // An interval longer than the cap is never shortened by failures.
        let mut long = Backoff::new(Duration::from_secs(3600), MAX_BACKOFF);
        assert_eq!(long.failure(), Duration::from_secs(3600));
        // Zero would spin.
        assert_eq!(
            Backoff::new(Duration::ZERO, MAX_BACKOFF).success(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_a_wrong_set_up_ends_the_service() {
        assert!(is_fatal(&CliError::Config("x".into())));
        assert!(is_fatal(&CliError::Usage("x".into())));
        assert!(!is_fatal(&CliError::NotAvailable("x".into())));
        assert!(!is_fatal(&CliError::RecordRefused("x".into())));
        assert!(!is_fatal(&CliError::Substitute("x".into())));
    }
}
