//! `tailcache switch`: puts this machine on exactly what the build server built for it.
//! It fetches the host's newest ready generation (`GET /hosts/<name>`), verifies the record's
//! signature against the trusted keys and that it is not older than what this machine
//! applied, shows what changes, has stock Nix substitute the out path (signatures required),
//! then sets the profile and activates: `switch-to-configuration` for NixOS, `activate` for
//! home-manager. It never evaluates Nix code. Every refusal happens before anything changes.
//! `tailcache prefetch` follows the same target and substitutes each new ready generation
//! ahead of the switch (and, asked to, applies it through the switch).
//!
//! # Layout
//! - [`decide`]: which generation, whether its record is one to act on (pure).
//! - [`applied`]: the file remembering what this machine applied, per server key and target.
//! - [`nix`]: the Nix commands (show-config, realise, set a profile) and the activation.
//! - [`prefetch`]: `tailcache prefetch`, the follower.

pub mod applied;
pub mod decide;
pub mod nix;
pub mod prefetch;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use tailcache_store::signing::PublicKey;
use tailcache_wire::generation::{GenerationRecord, TargetKind};
use tailcache_wire::hosts::{GenerationState, HostView};

use self::applied::AppliedGeneration;
use self::decide::Standing;
use self::nix::Nix;
use super::client::{CliError, Client, Who, proc_uid};
use super::config::{self, ClientConfig};
use super::hosts::{bytes, diff_lines, when};
use super::output::{self, Style};
use super::{ServerArgs, exit};

/// What to do with a NixOS generation (as `nixos-rebuild`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Set the system profile and activate it now.
    Switch,
    /// Set the system profile and make it the boot default; activate at the next boot.
    Boot,
    /// Activate now without setting the profile (gone after a reboot).
    Test,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
        }
    }
}

/// What `tailcache switch` and `tailcache prefetch` share: the target, the keys a record
/// must be signed by, what this machine applied, and how to run Nix.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// The target [default: this machine's hostname; with --home, $USER@hostname].
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    /// The home-manager target ($USER@hostname unless --host names one); a target of
    /// another kind is refused.
    #[arg(long)]
    pub home: bool,
    /// A key (`name:base64`) whose signature on the record is accepted; repeatable
    /// [default: `trusted_keys` in config.toml, else nix.conf's trusted-public-keys].
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// The file remembering what this machine applied [default: as root
    /// /var/lib/tailcache-switch/applied.json, else $XDG_STATE_HOME/tailcache/applied.json].
    #[arg(long, value_name = "FILE", env = "TAILCACHE_SWITCH_STATE")]
    pub state_file: Option<PathBuf>,
    /// The Nix store to substitute into (`--store` of the Nix commands); a directory is a
    /// chroot store, whose scripts run from DIR/nix/store and whose system profile is
    /// DIR/nix/var/nix/profiles/system.
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
    /// A Nix setting for every Nix command it runs (`--option NAME VALUE`), e.g.
    /// `--nix-option substituters http://build-server:5000`; repeatable.
    #[arg(long, num_args = 2, value_names = ["NAME", "VALUE"])]
    pub nix_option: Vec<String>,
}

impl TargetArgs {
    /// The applied-generations file.
    pub fn state_path(&self) -> Result<PathBuf, CliError> {
        match &self.state_file {
            Some(p) => Ok(p.clone()),
            None => applied::default_path().ok_or_else(|| {
                CliError::Config(
                    "no place for the applied-generations file: set HOME, XDG_STATE_HOME or \
                     --state-file"
                        .to_owned(),
                )
            }),
        }
    }
}

/// `tailcache switch`.
#[derive(Debug, Clone, Args)]
pub struct SwitchArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Take this kept generation instead of the newest ready one (rolls back on purpose).
    #[arg(long, value_name = "N")]
    pub generation: Option<u64>,
    /// Accept a generation older than the one this machine applied last.
    #[arg(long)]
    pub allow_older: bool,
    /// Show what would change and stop: nothing is fetched, set, activated or remembered.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// For a NixOS target: `switch` (set the profile, activate now), `boot` (set the
    /// profile, activate at the next boot) or `test` (activate now, profile unchanged).
    #[arg(long, value_enum, default_value = "switch")]
    pub action: Action,
    /// The profile to point at the generation [default: /nix/var/nix/profiles/system for
    /// NixOS; a home-manager target's `activate` sets its own; a package target needs one].
    #[arg(long, value_name = "PATH")]
    pub profile: Option<PathBuf>,
}

impl SwitchArgs {
    /// A plain switch of `target` with `action` (what `prefetch --auto-switch` applies).
    pub fn of(target: TargetArgs, action: Action) -> SwitchArgs {
        SwitchArgs {
            target,
            generation: None,
            allow_older: false,
            dry_run: false,
            action,
            profile: None,
        }
    }
}

/// Following one target of the build server: the client, its config file, Nix, the name.
#[derive(Debug)]
pub struct Follow {
    pub client: Client,
    pub file: ClientConfig,
    pub nix: Nix,
    pub name: String,
}

impl Follow {
    pub fn new(server: &ServerArgs, t: &TargetArgs) -> Result<Follow, CliError> {
        let file = ClientConfig::load_for(server)?;
        let client = Client::new(config::resolve(server, |k| std::env::var(k).ok(), &file)?)?;
        let nix = Nix::new(
            t.store.clone(),
            t.nix_option
                .chunks(2)
                .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                .collect(),
        );
        let who = Who::current();
        let name = match (&t.host, t.home) {
            (Some(h), _) => h.clone(),
            (None, false) => who.host.clone(),
            (None, true) => format!("{}@{}", who.user, who.host),
        };
        Ok(Follow {
            client,
            file,
            nix,
            name,
        })
    }

    /// The target's view on the server (an unknown name is an error listing the known ones).
    pub fn view(&self, home: bool) -> Result<HostView, CliError> {
        let view = match self.client.host(&self.name)? {
            Some(v) => v,
            None => return Err(unknown_host(&self.client, &self.name, home)),
        };
        if home && view.kind != TargetKind::Home {
            return Err(CliError::Usage(format!(
                "--home: {} is a {} target, not a home-manager one",
                self.name,
                view.kind.as_str()
            )));
        }
        Ok(view)
    }

    /// The keys a record must be signed by: `--trusted-key`s, else the config file's, else
    /// the ones Nix trusts for substitution (the server signs records with its cache key).
    pub fn trusted_keys(&self, t: &TargetArgs) -> Result<Vec<PublicKey>, CliError> {
        let (keys, from) = if !t.trusted_keys.is_empty() {
            (t.trusted_keys.clone(), "--trusted-key")
        } else if !self.file.trusted_keys.is_empty() {
            (
                self.file.trusted_keys.clone(),
                "trusted_keys in config.toml",
            )
        } else {
            let from_nix = self.nix.trust_config()?.trusted_public_keys;
            // nix.conf may hold keys in forms this parser does not know; those cannot sign.
            let keys: Vec<PublicKey> = from_nix
                .iter()
                .filter_map(|k| PublicKey::parse(k).ok())
                .collect();
            if keys.is_empty() {
                return Err(CliError::Config(
                    "no trusted keys: Nix trusts none, and neither --trusted-key nor \
                     trusted_keys in config.toml names one"
                        .to_owned(),
                ));
            }
            return Ok(keys);
        };
        keys.iter()
            .map(|k| {
                PublicKey::parse(k).map_err(|e| CliError::Config(format!("{from}: {k:?}: {e}")))
            })
            .collect()
    }

    /// Nix requires signatures, or nothing is substituted.
    pub fn require_sigs(&self) -> Result<(), CliError> {
        if self.nix.trust_config()?.require_sigs {
            return Ok(());
        }
        Err(CliError::Config(
            "Nix is configured with require-sigs = false, so it would install unsigned paths; \
             tailcache only substitutes with signatures required (nothing was changed)"
                .to_owned(),
        ))
    }
}

/// What the record's kind and the flags make of the activation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Activation {
    /// `nix-env -p PROFILE --set` (unless `test`), then `switch-to-configuration ACTION`.
    Nixos { profile: PathBuf, action: Action },
    /// `<out>/activate`.
    Home,
    /// `nix-env -p PROFILE --set` only.
    Profile(PathBuf),
}

impl Activation {
    fn label(&self) -> &'static str {
        match self {
            Activation::Nixos { action, .. } => action.as_str(),
            Activation::Home => "activate",
            Activation::Profile(_) => "profile",
        }
    }

    fn profile(&self) -> Option<&PathBuf> {
        match self {
            Activation::Nixos {
                profile,
                action: Action::Switch | Action::Boot,
            }
            | Activation::Profile(profile) => Some(profile),
            Activation::Nixos { .. } | Activation::Home => None,
        }
    }
}

pub fn run(server: &ServerArgs, args: &SwitchArgs) -> Result<u8, CliError> {
    let started = Instant::now();
    let follow = Follow::new(server, &args.target)?;
    let style = Style::stdout();
    let view = follow.view(args.target.home)?;
    let activation = activation_of(view.kind, args, &follow.nix)?;

    // Refusals first: nothing below changes anything until the record has passed.
    let trusted = follow.trusted_keys(&args.target)?;
    let g = decide::select(&view, args.generation)?;
    let (record, key) = decide::verify(&view, g, &trusted)?;
    let key_id = key.to_nix_string();
    let state_path = args.target.state_path()?;
    let _lock = if args.dry_run {
        None
    } else {
        Some(applied::lock(&state_path)?)
    };
    let mut state = applied::load(&state_path)?;
    let before = state.get(&key_id, &record.target).cloned();
    let standing = decide::standing(&record, before.as_ref());
    let notice = decide::allowed(
        &record,
        &standing,
        args.generation.is_some(),
        args.allow_older,
    )?;

    if standing == Standing::Same && is_in_place(&activation, &before, &record) {
        println!(
            "{} {} is already at generation {} ({}); nothing to do",
            style.green("✓"),
            record.target,
            record.generation,
            record.out_path
        );
        return Ok(exit::OK);
    }
    print!(
        "{}",
        describe(&record, &key, before.as_ref(), &view, &style)
    );
    if let Some(n) = &notice {
        println!("{} {n}", style.yellow("!"));
    }
    if args.dry_run {
        println!("dry run: nothing was fetched, set or activated");
        return Ok(exit::OK);
    }
    if needs_root(&activation, &follow.nix, args) && proc_uid(1) != Some(0) {
        return Err(needs_sudo(&record.target));
    }

    let fetched = install(&follow, &activation, &record)?;
    let applied = applied_now(&record, &activation, follow.client.url());
    state.set(&key_id, &record.target, applied);
    applied::save(&state_path, &state)?;
    println!(
        "{} {} is at generation {} ({}) · fetched in {}, {} in all",
        style.green("✓"),
        record.target,
        record.generation,
        activation.label(),
        output::duration(fetched.as_secs_f64()),
        output::duration(started.elapsed().as_secs_f64())
    );
    Ok(exit::OK)
}

/// The one step that changes the machine: has Nix substitute the record's out path
/// (signatures required), then sets the profile and activates. Returns how long the
/// substitution took.
fn install(
    follow: &Follow,
    activation: &Activation,
    record: &GenerationRecord,
) -> Result<std::time::Duration, CliError> {
    follow.require_sigs()?;
    let fetched = substitute(&follow.nix, &record.out_path)?;
    apply(activation, &follow.nix, record)?;
    Ok(fetched)
}

/// What the applied-state file records for `record`, applied just now from `server`.
fn applied_now(
    record: &GenerationRecord,
    activation: &Activation,
    server: &str,
) -> AppliedGeneration {
    AppliedGeneration {
        generation: record.generation,
        out_path: record.out_path.clone(),
        action: activation.label().to_owned(),
        applied_at: jiff::Timestamp::now(),
        server: server.to_owned(),
    }
}

fn needs_sudo(target: &str) -> CliError {
    CliError::Usage(format!(
        "switching the NixOS system {target} needs root: run `sudo tailcache switch` (nothing \
         was changed)"
    ))
}

/// Brings `out_path` into the store (through the substituters) unless it is there; returns
/// how long that took.
fn substitute(nix: &Nix, out_path: &str) -> Result<std::time::Duration, CliError> {
    let started = Instant::now();
    if nix.is_valid(out_path) {
        println!("{out_path} is already in the store");
    } else {
        println!("substituting {out_path} …");
        nix.realise(out_path, None)?;
    }
    Ok(started.elapsed())
}

fn activation_of(kind: TargetKind, args: &SwitchArgs, nix: &Nix) -> Result<Activation, CliError> {
    if kind != TargetKind::Nixos && args.action != Action::Switch {
        return Err(CliError::Usage(format!(
            "--action {} is for NixOS targets; this one is {}",
            args.action.as_str(),
            kind.as_str()
        )));
    }
    Ok(match kind {
        TargetKind::Nixos => Activation::Nixos {
            profile: args.profile.clone().unwrap_or_else(|| nix.system_profile()),
            action: args.action,
        },
        TargetKind::Home => Activation::Home,
        TargetKind::Package => match &args.profile {
            Some(p) => Activation::Profile(p.clone()),
            None => {
                return Err(CliError::Usage(
                    "a package target has nothing to activate: name the profile to set with \
                     --profile"
                        .to_owned(),
                ));
            }
        },
    })
}

/// NixOS on the machine's own store and system profile: root's job.
fn needs_root(activation: &Activation, nix: &Nix, args: &SwitchArgs) -> bool {
    matches!(activation, Activation::Nixos { .. })
        && nix.chroot().is_none()
        && args.profile.is_none()
}

/// Already applied, and (where there is a profile) the profile still points at it, so a
/// manual rollback since is not mistaken for "nothing to do".
fn is_in_place(
    activation: &Activation,
    before: &Option<AppliedGeneration>,
    record: &GenerationRecord,
) -> bool {
    let Some(b) = before else { return false };
    if b.action != activation.label() {
        return false;
    }
    match activation.profile() {
        Some(p) => nix::profile_target(p).as_deref() == Some(record.out_path.as_str()),
        None => true,
    }
}

fn apply(activation: &Activation, nix: &Nix, record: &GenerationRecord) -> Result<(), CliError> {
    let out = nix.physical(&record.out_path);
    let script = match activation {
        Activation::Nixos { .. } => Some(out.join("bin/switch-to-configuration")),
        Activation::Home => Some(out.join("activate")),
        Activation::Profile(_) => None,
    };
    // Checked before the profile moves: a closure without its script is not what the
    // record's kind promised.
    if let Some(s) = &script
        && !s.is_file()
    {
        return Err(CliError::Activation(format!(
            "{} has no {}: it is not a {} generation (nothing was changed)",
            record.out_path,
            s.strip_prefix(&out).unwrap_or(s).display(),
            record.kind.as_str()
        )));
    }
    if let Some(p) = activation.profile() {
        nix.set_profile(p, &record.out_path)?;
        println!("{} → {}", p.display(), record.out_path);
    }
    match (activation, &script) {
        (Activation::Nixos { action, .. }, Some(s)) => nix::activate(s, &[action.as_str()]),
        (Activation::Home, Some(s)) => nix::activate(s, &[]),
        _ => Ok(()),
    }
}

/// What the switch is about: the record, where it came from, and what changes.
fn describe(
    r: &GenerationRecord,
    key: &PublicKey,
    before: Option<&AppliedGeneration>,
    view: &HostView,
    style: &Style,
) -> String {
    let mut out = format!(
        "{} ({}): generation {} from build {}",
        style.bold(&r.target),
        r.kind.as_str(),
        r.generation,
        r.build_id
    );
    if let Some(c) = &r.commit {
        out.push_str(&format!(", commit {}", c.get(..12).unwrap_or(c)));
    }
    out.push_str(&format!(
        ", built {}, signed by {}\n  {}\n  closure: {} paths, {}\n",
        when(&r.built_at),
        key.name(),
        r.out_path,
        r.closure_paths,
        bytes(r.closure_nar_size)
    ));
    out.push_str(&diff_lines(r, "  "));
    match before {
        Some(b) => {
            out.push_str(&format!(
                "  this machine: generation {} ({}, {})\n",
                b.generation,
                b.action,
                when(&b.applied_at)
            ));
            if r.diff.previous.is_some_and(|p| p != b.generation) {
                out.push_str(&format!(
                    "  (the changes above are against generation {}, not this machine's)\n",
                    r.diff.previous.unwrap_or_default()
                ));
            }
        }
        None => out.push_str("  this machine: no generation of it applied yet\n"),
    }
    if let Some(newest) = view.generations.first()
        && newest.generation > r.generation
        && newest.state == GenerationState::Compressing
    {
        out.push_str(&format!(
            "  (generation {} is newer but not ready yet)\n",
            newest.generation
        ));
    }
    out
}

/// "No such target", with the names the server knows.
fn unknown_host(client: &Client, name: &str, home: bool) -> CliError {
    let known = match client.hosts() {
        Ok(Some(h)) if !h.hosts.is_empty() => h
            .hosts
            .iter()
            .map(|h| format!("{} ({})", h.name, h.kind.as_str()))
            .collect::<Vec<_>>()
            .join(", "),
        Ok(Some(_)) => "none".to_owned(),
        _ => "unknown".to_owned(),
    };
    let hint = if home {
        ""
    } else {
        " (a home-manager target: --home)"
    };
    CliError::NotAvailable(format!(
        "the server builds no target named {name}; its targets: {known}; pick one with \
         --host NAME{hint}"
    ))
}
