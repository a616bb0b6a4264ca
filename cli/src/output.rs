//! Human output: colours only on a terminal and without `NO_COLOR` (no-color.org), the
//! short status summary, and times as a person reads them (`14:30 UTC`, `1m05s`).

use std::io::IsTerminal as _;

use tailcache_wire::build::{BuildResult, BuildStatus, RequestedBy};

/// Whether to colour a stream.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

impl Style {
    pub fn stdout() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && !no_color(),
        }
    }

    pub fn stderr() -> Style {
        Style {
            color: std::io::stderr().is_terminal() && !no_color(),
        }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }

    pub fn result(&self, r: BuildResult) -> String {
        match r {
            BuildResult::Success => self.green(r.as_str()),
            BuildResult::Failed => self.red(r.as_str()),
            BuildResult::Cancelled | BuildResult::Interrupted => self.yellow(r.as_str()),
        }
    }
}

/// Whether stdout is a terminal (spinners and redraws only then).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2026-11-24T14:30:05Z`, optional
/// fraction, any offset); `None` for anything else.
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let t: jiff::Timestamp = s.parse().ok()?;
    Some(t.as_nanosecond() as f64 / 1e9)
}

/// `14:30 UTC` for an RFC 3339 UTC time, the input itself otherwise.
pub fn clock(s: &str) -> String {
    match s.split_once('T') {
        Some((_, t)) if s.ends_with('Z') && t.len() >= 5 => format!("{} UTC", &t[..5]),
        _ => s.to_owned(),
    }
}

/// `42s`, `3m05s`, `1h02m`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Time since `start` (RFC 3339), if it parses.
pub fn elapsed_since(start: Option<&str>) -> Option<String> {
    let t = parse_rfc3339(start?)?;
    Some(duration(now_unix() - t))
}

pub fn who(r: &RequestedBy) -> String {
    r.to_string()
}

fn short_commit(c: &str) -> &str {
    c.get(..12).unwrap_or(c)
}

/// The `bs` summary: a few lines.
pub fn summary(s: &BuildStatus, style: &Style) -> String {
    let mut out = String::new();
    let id = s.build_id.map_or_else(String::new, |i| format!(" {i}"));
    if s.is_running {
        let step = s.current_step.as_deref().unwrap_or("starting");
        let elapsed = elapsed_since(s.last_start.as_deref()).unwrap_or_else(|| "?".into());
        out.push_str(&format!(
            "{} build{id}: step {} · {elapsed}",
            style.yellow("●"),
            style.bold(step)
        ));
        if let Some(r) = &s.requested_by {
            out.push_str(&format!(" · triggered by {}", who(r)));
        }
        out.push('\n');
        if let Some(last) = s.history.first() {
            out.push_str(&format!(
                "  last build {}: {} at {}\n",
                last.build_id,
                style.result(last.result),
                clock(&last.finished)
            ));
        }
    } else if let Some(result) = s.last_status {
        let mark = if result == BuildResult::Success {
            style.green("✓")
        } else {
            style.red("✗")
        };
        out.push_str(&format!("{mark} build{id}: {}", style.result(result)));
        if let Some(f) = &s.last_finish {
            out.push_str(&format!(" at {}", clock(f)));
        }
        if let Some(d) = s.history.first().map(|h| h.duration_seconds) {
            out.push_str(&format!(" after {}", duration(d)));
        }
        if let Some(r) = &s.requested_by {
            out.push_str(&format!(" · triggered by {}", who(r)));
        }
        out.push('\n');
        if result != BuildResult::Success {
            if let Some(step) = &s.last_failing_step {
                out.push_str(&format!("  failing step: {step}"));
                if let Some(code) = s.last_exit_status {
                    out.push_str(&format!(" (exit {code})"));
                }
                out.push('\n');
            }
            if let Some(e) = &s.last_error {
                out.push_str(&format!("  {e}\n"));
            }
        }
    } else {
        out.push_str("no build has run yet; `bt` starts one\n");
    }
    if let Some(c) = &s.last_commit {
        out.push_str(&format!("  commit {}\n", short_commit(c)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(parse_rfc3339("2000-03-01 00:00:01"), None);
        assert_eq!(clock("2026-11-24T14:30:05Z"), "14:30 UTC");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(65.0), "1m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }

    #[test]
    fn summary_of_running_and_failed() {
        let style = Style { color: false };
        let s = BuildStatus {
            is_running: true,
            build_id: Some(7),
            current_step: Some("build".into()),
            requested_by: Some(RequestedBy {
                host: "laptop".into(),
                user: "alice".into(),
                tailnet: None,
            }),
            ..Default::default()
        };
        let text = summary(&s, &style);
        assert!(text.contains("build 7: step build"), "{text}");
        assert!(text.contains("alice@laptop"), "{text}");
        let f = BuildStatus {
            build_id: Some(8),
            last_status: Some(BuildResult::Failed),
            last_failing_step: Some("test".into()),
            last_exit_status: Some(3),
            ..Default::default()
        };
        let text = summary(&f, &style);
        assert!(text.contains("build 8: failed"), "{text}");
        assert!(text.contains("failing step: test (exit 3)"), "{text}");
        assert!(!text.contains('\x1b'));
    }
}
