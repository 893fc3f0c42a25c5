//! CPU time of the calling thread, to charge each model call what it burnt.
//!
//! A call runs start to finish on one blocking thread, so the difference of
//! the thread's CPU clock before and after is the call's CPU time, unlike its
//! wall time unaffected by waiting for a core on a busy host.

use std::time::Duration;

/// CPU time consumed by the current thread so far, where the OS tells.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple"
))]
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the OS defines; clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple"
)))]
pub fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_advances_with_work_but_not_with_sleep() {
        let Some(start) = thread_cpu_time() else {
            return;
        };
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x ^ i.wrapping_mul(31));
        }
        let worked = thread_cpu_time().unwrap_or_default();
        assert!(worked > start, "busy work did not advance the CPU clock");
        std::thread::sleep(Duration::from_millis(200));
        let slept = thread_cpu_time().unwrap_or_default() - worked;
        // Sleeping costs (almost) no CPU: far less than the 200 ms slept.
        assert!(slept < Duration::from_millis(100), "sleep cost {slept:?}");
    }
}
