//! Human output of the per-target views (`GET /hosts`): the `bs` table (one line per
//! host), `bs --host NAME` in detail, and the generation records' closure diffs as
//! `tailcache switch` and `bs --host` show them. Records are shown as the server sent them;
//! nothing here acts on one (acting is `switch`'s, after verifying the signature).

use tailcache_wire::generation::{ClosureDiff, GenerationRecord, PackageChange};
use tailcache_wire::hosts::{GenerationState, HostState, HostView, target_result};

use super::output::Style;

/// Package lines shown before "… N more".
const DIFF_LINES: usize = 20;

/// `512 B`, `3.4 KiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `+1.2 MiB`, `-300 B`, `±0 B`.
pub fn signed_bytes(d: i64) -> String {
    match d {
        0 => "±0 B".to_owned(),
        d if d > 0 => format!("+{}", bytes(d.unsigned_abs())),
        d => format!("-{}", bytes(d.unsigned_abs())),
    }
}

/// `2026-12-01 12:00 UTC`.
pub fn when(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

fn short_commit(c: &str) -> &str {
    c.get(..12).unwrap_or(c)
}

/// Versions as `nix store diff-closures` writes them: `ε` for an empty version, `∅` for
/// none at all.
fn versions(v: &[String]) -> String {
    if v.is_empty() {
        return "∅".to_owned();
    }
    let shown: Vec<&str> = v
        .iter()
        .map(|s| if s.is_empty() { "ε" } else { s.as_str() })
        .collect();
    shown.join(", ")
}

/// `firefox: 120.0 → 121.0, +1.2 MiB`.
pub fn package_line(p: &PackageChange) -> String {
    let mut line = format!(
        "{}: {} → {}",
        p.name,
        versions(&p.before),
        versions(&p.after)
    );
    if p.size_delta != 0 {
        line.push_str(&format!(", {}", signed_bytes(p.size_delta)));
    }
    line
}

/// `3 paths added, 2 removed`.
fn path_counts(d: &ClosureDiff) -> String {
    let plural = |n: usize| if n == 1 { "path" } else { "paths" };
    match (d.added.len(), d.removed.len()) {
        (0, 0) => "no path changed".to_owned(),
        (a, 0) => format!("{a} {} added", plural(a)),
        (0, r) => format!("{r} {} removed", plural(r)),
        (a, r) => format!("{a} {} added, {r} removed", plural(a)),
    }
}

/// The diff of a record: a heading line, then one line per package (at most
/// [`DIFF_LINES`], then how many more), each indented by `indent`.
pub fn diff_lines(r: &GenerationRecord, indent: &str) -> String {
    let d = &r.diff;
    let mut out = match d.previous {
        Some(p) => format!("{indent}changes since generation {p}: {}\n", path_counts(d)),
        None => format!(
            "{indent}first generation of {}: {} paths\n",
            r.target, r.closure_paths
        ),
    };
    for p in d.packages.iter().take(DIFF_LINES) {
        out.push_str(&format!("{indent}  {}\n", package_line(p)));
    }
    if d.packages.len() > DIFF_LINES {
        out.push_str(&format!(
            "{indent}  … {} more packages\n",
            d.packages.len() - DIFF_LINES
        ));
    }
    out
}

/// What a record changed, in a few words for the table: `firefox 120.0→121.0, +hello
/// 2.12 (+3 more)`.
pub fn short_change(r: &GenerationRecord) -> String {
    let d = &r.diff;
    if d.previous.is_none() {
        return "first generation".to_owned();
    }
    if d.packages.is_empty() {
        return path_counts(d);
    }
    let one = |p: &PackageChange| match (p.before.is_empty(), p.after.is_empty()) {
        (true, _) => format!("+{} {}", p.name, versions(&p.after)),
        (_, true) => format!("-{}", p.name),
        _ => format!("{} {}→{}", p.name, versions(&p.before), versions(&p.after)),
    };
    let mut s = d
        .packages
        .iter()
        .take(2)
        .map(one)
        .collect::<Vec<_>>()
        .join(", ");
    if d.packages.len() > 2 {
        s.push_str(&format!(" (+{} more)", d.packages.len() - 2));
    }
    s
}

fn state_word(s: HostState) -> &'static str {
    match s {
        HostState::Building => "building",
        HostState::Compressing => "compressing",
        HostState::Ready => "ready",
        HostState::Failed => "failed",
        HostState::New => "new",
    }
}

fn paint_state(style: &Style, s: HostState, padded: &str) -> String {
    match s {
        HostState::Ready => style.green(padded),
        HostState::Failed => style.red(padded),
        HostState::Building | HostState::Compressing => style.yellow(padded),
        HostState::New => style.dim(padded),
    }
}

/// The newest kept generation's record, parsed for display.
fn newest(h: &HostView) -> Option<GenerationRecord> {
    h.generations
        .first()
        .and_then(|g| g.signed.parse_unverified().ok())
}

/// The last column of a host's line: what changed, or why it failed.
fn changes_cell(h: &HostView, rec: Option<&GenerationRecord>) -> String {
    if h.state == HostState::Failed
        && let Some(o) = &h.last_outcome
    {
        let n = o.failed_derivations.len();
        return match (n, &o.error) {
            (0, Some(e)) => format!("build {} failed: {e}", o.build_id),
            (0, None) => format!("build {} {}", o.build_id, o.result),
            (1, _) => format!(
                "build {} failed: {}",
                o.build_id,
                drv_name(&o.failed_derivations[0])
            ),
            (n, _) => format!("build {} failed: {n} derivations", o.build_id),
        };
    }
    match rec {
        Some(r) => short_change(r),
        None if h.state == HostState::Building => "first build running".to_owned(),
        None => "never built".to_owned(),
    }
}

/// `broken-1.0.drv` of `/nix/store/<hash>-broken-1.0.drv`.
fn drv_name(p: &str) -> &str {
    let base = p.rsplit('/').next().unwrap_or(p);
    match base.split_once('-') {
        Some((hash, rest)) if hash.len() == 32 => rest,
        _ => base,
    }
}

/// The `bs` table: one line per host. Empty when the server has no targets.
pub fn table(hosts: &[HostView], style: &Style) -> String {
    if hosts.is_empty() {
        return String::new();
    }
    let rows: Vec<(HostState, [String; 6])> = hosts
        .iter()
        .map(|h| {
            let rec = newest(h);
            let gen_ = rec
                .as_ref()
                .map_or_else(|| "-".to_owned(), |r| r.generation.to_string());
            let size = rec
                .as_ref()
                .map_or_else(|| "-".to_owned(), |r| bytes(r.closure_nar_size));
            (
                h.state,
                [
                    h.name.clone(),
                    h.kind.as_str().to_owned(),
                    state_word(h.state).to_owned(),
                    gen_,
                    size,
                    changes_cell(h, rec.as_ref()),
                ],
            )
        })
        .collect();
    let head = ["host", "kind", "state", "gen", "closure", "changes"];
    let mut w = head.map(|h| h.chars().count());
    for (_, r) in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let pad = |s: &str, n: usize| format!("{s}{}", " ".repeat(n - s.chars().count()));
    let lpad = |s: &str, n: usize| format!("{}{s}", " ".repeat(n - s.chars().count()));
    let mut out = format!(
        "{}\n",
        style.dim(
            format!(
                "{}  {}  {}  {}  {}  {}",
                pad(head[0], w[0]),
                pad(head[1], w[1]),
                pad(head[2], w[2]),
                lpad(head[3], w[3]),
                lpad(head[4], w[4]),
                head[5]
            )
            .trim_end()
        )
    );
    for (state, r) in &rows {
        let line = format!(
            "{}  {}  {}  {}  {}  {}",
            pad(&r[0], w[0]),
            pad(&r[1], w[1]),
            paint_state(style, *state, &pad(&r[2], w[2])),
            lpad(&r[3], w[3]),
            lpad(&r[4], w[4]),
            r[5]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `bs --host NAME`: state, last outcome (with failed derivations), kept generations and
/// the newest one's diff.
pub fn detail(h: &HostView, style: &Style) -> String {
    let mut out = format!(
        "{} ({}, {}): {}\n",
        style.bold(&h.name),
        h.kind.as_str(),
        h.attribute,
        paint_state(style, h.state, state_word(h.state))
    );
    match h.current {
        Some(c) => out.push_str(&format!(
            "  current: generation {c} (what `tailcache switch` takes)\n"
        )),
        None => out.push_str("  current: no ready generation yet\n"),
    }
    if let Some(o) = &h.last_outcome {
        out.push_str(&format!("  last build {}: {}", o.build_id, o.result));
        if let Some(g) = o.generation {
            out.push_str(&format!(" → generation {g}"));
        }
        if let Some(e) = &o.error {
            out.push_str(&format!(": {e}"));
        }
        out.push('\n');
        for d in &o.failed_derivations {
            out.push_str(&format!("    failed derivation: {d}\n"));
        }
    }
    if h.generations.is_empty() {
        out.push_str("  no generation kept\n");
        return out;
    }
    out.push_str("  generations (newest first):\n");
    for g in &h.generations {
        let state = match g.state {
            GenerationState::Ready => style.green("ready      "),
            GenerationState::Compressing => style.yellow("compressing"),
        };
        match g.signed.parse_unverified() {
            Ok(r) => {
                out.push_str(&format!(
                    "    {:>4}  {state}  {}  build {}",
                    g.generation,
                    when(&r.built_at),
                    r.build_id
                ));
                if let Some(c) = &r.commit {
                    out.push_str(&format!("  commit {}", short_commit(c)));
                }
                out.push_str(&format!(
                    "  {} paths  {}\n          {}\n",
                    r.closure_paths,
                    bytes(r.closure_nar_size),
                    r.out_path
                ));
            }
            Err(e) => out.push_str(&format!("    {:>4}  {state}  {e}\n", g.generation)),
        }
    }
    if let Some(r) = newest(h) {
        out.push_str(&format!("  generation {}:\n", r.generation));
        out.push_str(&diff_lines(&r, "    "));
    }
    out
}

/// Where one target of a build stands, for `bt --wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetProgress {
    /// Still building or compressing (the word says which).
    Pending(&'static str),
    /// Its generation is servable.
    Ready(Option<u64>),
    /// It failed in this build: why.
    Failed(String),
}

/// Each target of build `build_id` with where it stands: hosts whose last outcome is this
/// build, and hosts still building (their outcome is not in yet). Others were not in it.
pub fn progress(hosts: &[HostView], build_id: u64) -> Vec<(String, TargetProgress)> {
    hosts
        .iter()
        .filter_map(|h| {
            let ours = h.last_outcome.as_ref().filter(|o| o.build_id == build_id);
            let p = match ours {
                _ if h.state == HostState::Building => TargetProgress::Pending("building"),
                None => return None,
                Some(o) if o.result == target_result::BUILDING => {
                    TargetProgress::Pending("building")
                }
                Some(o) if o.result != target_result::BUILT => TargetProgress::Failed(failure(h)),
                Some(o) => match o.generation {
                    Some(g) => match h.generations.iter().find(|v| v.generation == g) {
                        Some(v) if v.state == GenerationState::Ready => {
                            TargetProgress::Ready(Some(g))
                        }
                        None if h.current.is_some_and(|c| c >= g) => TargetProgress::Ready(Some(g)),
                        _ => TargetProgress::Pending("compressing"),
                    },
                    // Built, but nothing new to number: as ready as the host is.
                    None if h.state == HostState::Ready => TargetProgress::Ready(h.current),
                    None => TargetProgress::Pending("compressing"),
                },
            };
            Some((h.name.clone(), p))
        })
        .collect()
}

/// Why a host's last build failed for it, in one line.
fn failure(h: &HostView) -> String {
    let Some(o) = &h.last_outcome else {
        return "failed".to_owned();
    };
    let mut s = o.result.clone();
    if let Some(e) = &o.error {
        s.push_str(&format!(": {e}"));
    }
    match o.failed_derivations.as_slice() {
        [] => {}
        [one] => s.push_str(&format!(" ({one})")),
        [first, rest @ ..] => s.push_str(&format!(" ({first} and {} more)", rest.len())),
    }
    s
}

/// `laptop ready · alice@laptop compressing · broken failed`.
pub fn progress_line(p: &[(String, TargetProgress)]) -> String {
    p.iter()
        .map(|(name, p)| match p {
            TargetProgress::Pending(w) => format!("{name} {w}"),
            TargetProgress::Ready(_) => format!("{name} ready"),
            TargetProgress::Failed(_) => format!("{name} failed"),
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailcache_wire::generation::{SignedGeneration, TargetKind};
    use tailcache_wire::hosts::{GenerationView, TargetOutcome};

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
        assert_eq!(signed_bytes(0), "±0 B");
    }

    fn change(name: &str, before: &[&str], after: &[&str], delta: i64) -> PackageChange {
        PackageChange {
            name: name.into(),
            before: before.iter().map(|s| s.to_string()).collect(),
            after: after.iter().map(|s| s.to_string()).collect(),
            size_delta: delta,
        }
    }

    fn record(generation: u64, packages: Vec<PackageChange>) -> GenerationRecord {
        GenerationRecord {
            target: "laptop".into(),
            kind: TargetKind::Nixos,
            attribute: "nixosConfigurations.laptop.config.system.build.toplevel".into(),
            generation,
            out_path: "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-nixos-system-laptop".into(),
            build_id: 12,
            commit: Some("0123456789abcdef".into()),
            lock_hash: None,
            built_at: "2026-12-01T12:00:00Z".parse().unwrap(),
            closure_nar_size: 5 << 20,
            closure_paths: 7,
            diff: ClosureDiff {
                previous: (generation > 1).then(|| generation - 1),
                added: vec!["/nix/store/a".into(), "/nix/store/b".into()],
                removed: vec!["/nix/store/c".into()],
                packages,
            },
        }
    }

    #[test]
    fn package_lines_read_like_diff_closures() {
        assert_eq!(
            package_line(&change("firefox", &["120.0"], &["121.0"], 1 << 20)),
            "firefox: 120.0 → 121.0, +1.0 MiB"
        );
        assert_eq!(
            package_line(&change("hello", &[], &["2.12"], 0)),
            "hello: ∅ → 2.12"
        );
        assert_eq!(
            package_line(&change("etc", &[""], &[""], -10)),
            "etc: ε → ε, -10 B"
        );
        let r = record(
            5,
            vec![
                change("firefox", &["120.0"], &["121.0"], 1),
                change("hello", &[], &["2.12"], 1),
                change("old", &["1"], &[], -1),
            ],
        );
        assert_eq!(
            short_change(&r),
            "firefox 120.0→121.0, +hello 2.12 (+1 more)"
        );
        let d = diff_lines(&r, "  ");
        assert!(
            d.starts_with("  changes since generation 4: 2 paths added, 1 removed\n"),
            "{d}"
        );
        assert!(d.contains("    old: 1 → ∅, -1 B\n"), "{d}");
        assert_eq!(short_change(&record(1, vec![])), "first generation");
    }

    #[test]
    fn the_table_aligns_and_names_failures() {
        let key = tailcache_store::signing::SecretKey::generate("k-1").unwrap();
        let r = record(5, vec![change("firefox", &["120.0"], &["121.0"], 1)]);
        let ok = HostView {
            name: "laptop".into(),
            kind: TargetKind::Nixos,
            attribute: r.attribute.clone(),
            state: HostState::Ready,
            current: Some(5),
            last_outcome: None,
            generations: vec![GenerationView {
                generation: 5,
                state: GenerationState::Ready,
                signed: SignedGeneration::sign(&r, std::slice::from_ref(&key)),
            }],
        };
        let broken = HostView {
            name: "broken-host".into(),
            kind: TargetKind::Nixos,
            attribute: "nixosConfigurations.broken-host.config.system.build.toplevel".into(),
            state: HostState::Failed,
            current: None,
            last_outcome: Some(TargetOutcome {
                target: "broken-host".into(),
                build_id: 3,
                result: "failed".into(),
                generation: None,
                failed_derivations: vec![
                    "/nix/store/b370w7ihml74cy9lg6bfj80j94ycj0fr-broken.drv".into(),
                ],
                error: None,
            }),
            generations: vec![],
        };
        let t = table(&[ok.clone(), broken.clone()], &Style { color: false });
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("host  "), "{t}");
        assert!(
            lines[1] == "laptop       nixos  ready     5  5.0 MiB  firefox 120.0→121.0",
            "{t}"
        );
        assert!(
            lines[2] == "broken-host  nixos  failed    -        -  build 3 failed: broken.drv",
            "{t}"
        );
        let d = detail(&broken, &Style { color: false });
        assert!(d.contains("failed derivation: /nix/store/"), "{d}");
        let d = detail(&ok, &Style { color: false });
        assert!(d.contains("current: generation 5"), "{d}");
        assert!(d.contains("firefox: 120.0 → 121.0"), "{d}");
        assert!(d.contains("commit 0123456789ab"), "{d}");
    }

    #[test]
    fn a_build_is_over_when_each_of_its_targets_is_ready_or_failed() {
        let key = tailcache_store::signing::SecretKey::generate("k-1").unwrap();
        let signed = |g| SignedGeneration::sign(&record(g, vec![]), std::slice::from_ref(&key));
        let outcome = |build_id, result: &str, generation| TargetOutcome {
            target: String::new(),
            build_id,
            result: result.into(),
            generation,
            failed_derivations: vec![],
            error: None,
        };
        let host =
            |name: &str, state, o: Option<TargetOutcome>, gens: Vec<(u64, GenerationState)>| {
                HostView {
                    name: name.into(),
                    kind: TargetKind::Nixos,
                    attribute: String::new(),
                    state,
                    current: gens
                        .iter()
                        .find(|(_, s)| *s == GenerationState::Ready)
                        .map(|(g, _)| *g),
                    last_outcome: o,
                    generations: gens
                        .into_iter()
                        .map(|(generation, state)| GenerationView {
                            generation,
                            state,
                            signed: signed(generation),
                        })
                        .collect(),
                }
            };
        let hosts = vec![
            host(
                "a",
                HostState::Compressing,
                Some(outcome(7, "built", Some(2))),
                vec![
                    (2, GenerationState::Compressing),
                    (1, GenerationState::Ready),
                ],
            ),
            host(
                "b",
                HostState::Failed,
                Some(outcome(7, "failed", None)),
                vec![],
            ),
            host(
                "c",
                HostState::Building,
                Some(outcome(6, "built", Some(1))),
                vec![],
            ),
            host(
                "d",
                HostState::Compressing,
                Some(outcome(7, "building", None)),
                vec![],
            ),
            host(
                "old",
                HostState::Ready,
                Some(outcome(5, "built", Some(1))),
                vec![],
            ),
        ];
        let p = progress(&hosts, 7);
        assert_eq!(
            p,
            vec![
                ("a".to_owned(), TargetProgress::Pending("compressing")),
                ("b".to_owned(), TargetProgress::Failed("failed".into())),
                ("c".to_owned(), TargetProgress::Pending("building")),
                ("d".to_owned(), TargetProgress::Pending("building")),
            ]
        );
        assert_eq!(
            progress_line(&p),
            "a compressing · b failed · c building · d building"
        );
        let ready = vec![host(
            "a",
            HostState::Ready,
            Some(outcome(7, "built", Some(2))),
            vec![(2, GenerationState::Ready)],
        )];
        assert_eq!(
            progress(&ready, 7),
            vec![("a".to_owned(), TargetProgress::Ready(Some(2)))]
        );
    }
}
