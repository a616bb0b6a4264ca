//! The processes the tests look at, from `/proc`: a process's status fields, whether it
//! runs, the members of a process group; and this test process's own descriptor limit.

/// `/proc/<pid>/status` field (`VmRSS` in kB, `Threads`) as a number.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Raises this process's soft descriptor limit to its hard one when `needed` is more
/// (tests that open more sockets than a default soft limit of 1024 allows).
pub fn raise_own_nofile(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        hard >= needed,
        "this test needs {needed} file descriptors; the hard limit is {hard}"
    );
    if soft < needed {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

/// The live (not zombie) processes whose process group is `pgid`, from `/proc`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_state_and_group(pid).is_some_and(|(state, group)| group == pgid && state != "Z")
        })
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    proc_state_and_group(pid).is_some_and(|(state, _)| state != "Z")
}

/// State and process group of `pid` (`/proc/<pid>/stat` fields 3 and 5; the command name
/// before them may hold spaces, so fields are counted after its closing parenthesis).
fn proc_state_and_group(pid: u32) -> Option<(String, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.to_string();
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}
