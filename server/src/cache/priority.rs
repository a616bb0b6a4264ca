//! Background work at idle priority: the archive worker lowers its own thread so that its
//! minutes of xz never take a core from anything else — serving, the primary compression,
//! a build. On Linux the nice value and the scheduling policy are per thread, so this
//! changes only the calling thread (and the threads it starts later, which inherit them).

/// What [`lower_current_thread`] managed to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lowered {
    /// The thread's nice value is now 19, the lowest priority.
    pub nice: bool,
    /// The thread runs under `SCHED_IDLE`: only when a core has nothing else to run.
    pub sched_idle: bool,
}

/// Lowers the calling thread to nice 19 and `SCHED_IDLE`. A thread may always lower its own
/// priority, so both normally succeed; a sandbox that forbids them leaves the thread as it
/// was, which is logged and otherwise harmless.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lower_current_thread() -> Lowered {
    // SAFETY: plain system calls on the calling thread, no pointers but to a live local.
    let tid = unsafe { libc::gettid() };
    let nice = u32::try_from(tid).is_ok_and(|who| {
        // SAFETY: as above; `who` names this thread (Linux's nice value is per thread).
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, 19) };
        r == 0
    });
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    let sched_idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    let lowered = Lowered { nice, sched_idle };
    if !nice || !sched_idle {
        tracing::warn!(
            "could not fully lower the archive worker's priority ({lowered:?}): {}",
            std::io::Error::last_os_error()
        );
    }
    lowered
}

#[cfg(not(target_os = "linux"))]
pub fn lower_current_thread() -> Lowered {
    Lowered {
        nice: false,
        sched_idle: false,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `/proc/thread-self/stat`: (nice, policy) of the calling thread.
    fn own_nice_and_policy() -> (i64, u64) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name (which may hold spaces), counted from field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        (
            fields[19 - 3].parse().unwrap(),
            fields[41 - 3].parse().unwrap(),
        )
    }

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = own_nice_and_policy();
        let lowered = std::thread::spawn(|| {
            let lowered = lower_current_thread();
            (lowered, own_nice_and_policy())
        })
        .join()
        .unwrap();
        assert_eq!(
            lowered.0,
            Lowered {
                nice: true,
                sched_idle: true
            }
        );
        assert_eq!(lowered.1, (19, libc::SCHED_IDLE as u64));
        assert_eq!(
            own_nice_and_policy(),
            before,
            "the caller's thread is untouched"
        );
    }
}
