//! The decisions of `tailcache switch`, without I/O: which generation of a host to take,
//! whether its record is one to act on (signed by a trusted key, about this target and this
//! generation, naming a store path), and how it stands against what this machine applied.

use tailcache_store::signing::PublicKey;
use tailcache_store::store_path::StorePath;
use tailcache_wire::generation::{GenerationRecord, RecordError};
use tailcache_wire::hosts::{GenerationState, GenerationView, HostView};

use super::applied::AppliedGeneration;
use crate::client::CliError;

/// The store directory records must name (the clients' Nix).
const STORE_DIR: &str = "/nix/store";

/// The generation to switch to: `--generation N`, else the newest ready one.
pub fn select(view: &HostView, want: Option<u64>) -> Result<&GenerationView, CliError> {
    let kept = || {
        let v: Vec<String> = view
            .generations
            .iter()
            .map(|g| g.generation.to_string())
            .collect();
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    let number = match want.or(view.current) {
        Some(n) => n,
        None => {
            return Err(CliError::NotAvailable(format!(
                "{} has no ready generation yet (state: {}; kept: {})",
                view.name,
                state_name(view),
                kept()
            )));
        }
    };
    let g = view
        .generations
        .iter()
        .find(|g| g.generation == number)
        .ok_or_else(|| {
            CliError::NotAvailable(format!(
                "generation {number} of {} is not kept by the server (kept: {})",
                view.name,
                kept()
            ))
        })?;
    if g.state != GenerationState::Ready {
        return Err(CliError::NotAvailable(format!(
            "generation {number} of {} is not ready yet: its closure is still being \
             compressed; try again when `bs --host {}` says ready",
            view.name, view.name
        )));
    }
    Ok(g)
}

fn state_name(view: &HostView) -> String {
    serde_json::to_value(view.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The record, if a trusted key signed exactly these bytes and they say what the reply
/// around them says; with the key that vouched for it.
pub fn verify(
    view: &HostView,
    g: &GenerationView,
    trusted: &[PublicKey],
) -> Result<(GenerationRecord, PublicKey), CliError> {
    let refuse = |m: String| CliError::RecordRefused(m);
    let mut verified = None;
    for key in trusted {
        if let Ok(r) = g.signed.verify(std::slice::from_ref(key)) {
            verified = Some((r, key.clone()));
            break;
        }
    }
    let Some((record, key)) = verified else {
        let signers: Vec<&str> = g
            .signed
            .signatures
            .iter()
            .map(|s| s.split_once(':').map_or(s.as_str(), |(n, _)| n))
            .collect();
        // A trusted name whose signature does not verify: the bytes changed after signing.
        if let Some(k) = trusted.iter().find(|k| signers.contains(&k.name())) {
            return Err(refuse(format!(
                "generation {} of {}: the signature by {} does not match the record, which \
                 was changed after the server signed it; nothing was changed",
                g.generation,
                view.name,
                k.name()
            )));
        }
        let err = g.signed.verify(trusted).err().map_or_else(
            || "not signed by a trusted key".to_owned(),
            |e: RecordError| e.to_string(),
        );
        return Err(refuse(format!(
            "generation {} of {}: {err}; nothing was changed",
            g.generation, view.name
        )));
    };
    if record.target != view.name {
        return Err(refuse(format!(
            "the server's reply for {} carries a record of {} (generation {}); nothing was \
             changed",
            view.name, record.target, record.generation
        )));
    }
    if record.generation != g.generation {
        return Err(refuse(format!(
            "the server lists generation {} of {} but its signed record is generation {}; \
             nothing was changed",
            g.generation, view.name, record.generation
        )));
    }
    if record.kind != view.kind {
        return Err(refuse(format!(
            "{} is listed as {} but its signed record says {}; nothing was changed",
            view.name,
            view.kind.as_str(),
            record.kind.as_str()
        )));
    }
    if StorePath::from_absolute(STORE_DIR, &record.out_path).is_err() {
        return Err(refuse(format!(
            "generation {} of {} names {:?}, which is not a store path under {STORE_DIR}",
            record.generation, view.name, record.out_path
        )));
    }
    Ok((record, key))
}

/// The record against what this machine applied last for the same key and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Nothing applied yet.
    First,
    /// The same generation and out path.
    Same,
    Newer(u64),
    Older(u64),
    /// The same number with another out path: the server's history was reset or rewritten.
    Conflict(u64),
}

pub fn standing(record: &GenerationRecord, applied: Option<&AppliedGeneration>) -> Standing {
    let Some(a) = applied else {
        return Standing::First;
    };
    match record.generation.cmp(&a.generation) {
        std::cmp::Ordering::Greater => Standing::Newer(a.generation),
        std::cmp::Ordering::Less => Standing::Older(a.generation),
        std::cmp::Ordering::Equal if a.out_path == record.out_path => Standing::Same,
        std::cmp::Ordering::Equal => Standing::Conflict(a.generation),
    }
}

/// Whether to go on; `Some(notice)` when an override let an older generation through.
pub fn allowed(
    record: &GenerationRecord,
    standing: &Standing,
    asked_for_generation: bool,
    allow_older: bool,
) -> Result<Option<String>, CliError> {
    let (applied, what) = match standing {
        Standing::First | Standing::Same | Standing::Newer(_) => return Ok(None),
        Standing::Older(a) => (*a, "older than"),
        Standing::Conflict(a) => (*a, "a different path from"),
    };
    if allow_older || asked_for_generation {
        let why = if asked_for_generation {
            format!("--generation {}", record.generation)
        } else {
            "--allow-older".to_owned()
        };
        return Ok(Some(format!(
            "going back from generation {applied} to generation {} of {}, as {why} asks",
            record.generation, record.target
        )));
    }
    Err(CliError::RecordRefused(format!(
        "generation {} of {} is {what} generation {applied}, which this machine applied; \
         nothing was changed (roll back on purpose with --generation {}, or pass \
         --allow-older)",
        record.generation, record.target, record.generation
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcache_store::signing::SecretKey;
    use tailcache_wire::generation::{ClosureDiff, SignedGeneration, TargetKind};
    use tailcache_wire::hosts::HostState;

    fn record(target: &str, generation: u64, out: &str) -> GenerationRecord {
        GenerationRecord {
            target: target.into(),
            kind: TargetKind::Nixos,
            attribute: format!("nixosConfigurations.{target}.config.system.build.toplevel"),
            generation,
            out_path: out.into(),
            build_id: generation,
            commit: None,
            lock_hash: None,
            built_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            closure_nar_size: 1,
            closure_paths: 1,
            diff: ClosureDiff::default(),
        }
    }

    const OUT: &str = "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-nixos-system-laptop";

    fn view(key: &SecretKey, gens: &[(u64, GenerationState)]) -> HostView {
        HostView {
            name: "laptop".into(),
            kind: TargetKind::Nixos,
            attribute: String::new(),
            state: HostState::Compressing,
            current: gens
                .iter()
                .find(|(_, s)| *s == GenerationState::Ready)
                .map(|(g, _)| *g),
            last_outcome: None,
            generations: gens
                .iter()
                .map(|(g, s)| GenerationView {
                    generation: *g,
                    state: *s,
                    signed: SignedGeneration::sign(
                        &record("laptop", *g, OUT),
                        std::slice::from_ref(key),
                    ),
                })
                .collect(),
        }
    }

    #[test]
    fn the_newest_ready_generation_unless_one_is_asked_for() {
        let k = SecretKey::generate("srv-1").unwrap();
        let v = view(
            &k,
            &[
                (6, GenerationState::Compressing),
                (5, GenerationState::Ready),
                (4, GenerationState::Ready),
            ],
        );
        assert_eq!(select(&v, None).unwrap().generation, 5);
        assert_eq!(select(&v, Some(4)).unwrap().generation, 4);
        let e = select(&v, Some(6)).unwrap_err();
        assert!(e.to_string().contains("not ready yet"), "{e}");
        let e = select(&v, Some(2)).unwrap_err();
        assert!(e.to_string().contains("kept: 6, 5, 4"), "{e}");
        let none = view(&k, &[(1, GenerationState::Compressing)]);
        let e = select(&none, None).unwrap_err();
        assert!(e.to_string().contains("no ready generation yet"), "{e}");
    }

    #[test]
    fn only_a_trusted_untouched_record_about_this_host_passes() {
        let k = SecretKey::generate("srv-1").unwrap();
        let other = SecretKey::generate("evil-1").unwrap();
        let v = view(&k, &[(5, GenerationState::Ready)]);
        let g = &v.generations[0];
        let (r, key) = verify(&v, g, &[other.public(), k.public()]).unwrap();
        assert_eq!((r.generation, key.name()), (5, "srv-1"));

        let e = verify(&v, g, &[other.public()]).unwrap_err();
        assert!(e.to_string().contains("signed by: srv-1"), "{e}");

        let mut tampered = g.clone();
        tampered.signed.record = tampered.signed.record.replace("-laptop", "-laptoq");
        let e = verify(&v, &tampered, &[k.public()]).unwrap_err();
        assert!(
            e.to_string().contains("changed after the server signed"),
            "{e}"
        );

        // A genuine record of another host, served under this host's name.
        let mut swapped = g.clone();
        swapped.signed =
            SignedGeneration::sign(&record("desktop", 5, OUT), std::slice::from_ref(&k));
        let e = verify(&v, &swapped, &[k.public()]).unwrap_err();
        assert!(e.to_string().contains("carries a record of desktop"), "{e}");

        let mut renumbered = g.clone();
        renumbered.generation = 7;
        let e = verify(&v, &renumbered, &[k.public()]).unwrap_err();
        assert!(
            e.to_string().contains("signed record is generation 5"),
            "{e}"
        );

        let mut bad_path = g.clone();
        bad_path.signed = SignedGeneration::sign(
            &record("laptop", 5, "/etc/passwd"),
            std::slice::from_ref(&k),
        );
        let e = verify(&v, &bad_path, &[k.public()]).unwrap_err();
        assert!(e.to_string().contains("not a store path"), "{e}");
    }

    #[test]
    fn older_generations_need_an_explicit_override() {
        let applied = |g: u64, out: &str| AppliedGeneration {
            generation: g,
            out_path: out.into(),
            action: "switch".into(),
            applied_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            server: String::new(),
        };
        let r = record("laptop", 5, OUT);
        assert_eq!(standing(&r, None), Standing::First);
        assert_eq!(standing(&r, Some(&applied(5, OUT))), Standing::Same);
        assert_eq!(standing(&r, Some(&applied(4, OUT))), Standing::Newer(4));
        let older = standing(&r, Some(&applied(6, OUT)));
        assert_eq!(older, Standing::Older(6));
        let conflict = standing(&r, Some(&applied(5, "/nix/store/x")));
        assert_eq!(conflict, Standing::Conflict(5));

        assert_eq!(
            allowed(&r, &Standing::Newer(4), false, false).unwrap(),
            None
        );
        let e = allowed(&r, &older, false, false).unwrap_err();
        assert!(e.to_string().contains("older than generation 6"), "{e}");
        assert!(matches!(e, CliError::RecordRefused(_)));
        assert!(allowed(&r, &conflict, false, false).is_err());
        let n = allowed(&r, &older, true, false).unwrap().unwrap();
        assert!(n.contains("as --generation 5 asks"), "{n}");
        let n = allowed(&r, &older, false, true).unwrap().unwrap();
        assert!(n.contains("--allow-older"), "{n}");
    }
}
