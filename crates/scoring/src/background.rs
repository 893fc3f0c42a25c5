//! The background lane: model calls nobody is waiting on (challenger cells)
//! run here, one at a time, on one OS thread at the lowest scheduling
//! priority, so that a live call always gets a core before them.
//!
//! Live calls run on tokio's blocking pool at normal priority. A thread's
//! nice value cannot be raised again without privilege, so the background
//! lane has a thread of its own rather than borrowing pool threads. The
//! thread starts with the first task and ends when the lane is dropped.

use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The nice value of the background thread: the lowest priority there is.
const NICE: i32 = 19;

type Task = Box<dyn FnOnce() + Send>;

/// One low-priority thread running tasks in order.
#[derive(Default)]
pub(crate) struct BackgroundLane {
    sender: OnceLock<Option<mpsc::Sender<Task>>>,
}

/// What a task's time went to: `cpu` is what its thread burnt, `wall` the
/// time it took; a large difference is time spent waiting for a core.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskTimes {
    pub wall: Duration,
    pub cpu: Option<Duration>,
}

impl TaskTimes {
    /// Whether the task spent most of its time waiting for a core rather
    /// than running: live work had the machine.
    pub(crate) fn starved(&self) -> bool {
        self.cpu.is_some_and(|cpu| cpu * 2 < self.wall)
    }
}

impl BackgroundLane {
    /// Runs `task` on the background thread and answers its result with its
    /// times; `None` when the thread could not be started or the task
    /// panicked.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        task: impl FnOnce() -> T + Send + 'static,
    ) -> Option<(T, TaskTimes)> {
        let sender = self.sender.get_or_init(start).as_ref()?;
        let (answer, answered) = oneshot::channel();
        let boxed: Task = Box::new(move || {
            let (started, cpu_before) = (Instant::now(), riskhost_engine::thread_cpu_time());
            let value = task();
            let cpu = riskhost_engine::thread_cpu_time()
                .zip(cpu_before)
                .map(|(after, before)| after.saturating_sub(before));
            let times = TaskTimes {
                wall: started.elapsed(),
                cpu,
            };
            // The caller may have gone; its answer is then not needed.
            let _ = answer.send((value, times));
        });
        sender.send(boxed).ok()?;
        answered.await.ok()
    }
}

fn start() -> Option<mpsc::Sender<Task>> {
    let (sender, tasks) = mpsc::channel::<Task>();
    let spawned = std::thread::Builder::new()
        .name("riskhost-background".into())
        .spawn(move || {
            lower_own_priority();
            // Ends when the lane, and with it the sender, is dropped.
            while let Ok(task) = tasks.recv() {
                // A panicking task drops its answer; the lane goes on.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
            }
        });
    match spawned {
        Ok(_) => Some(sender),
        Err(error) => {
            tracing::error!(%error, "cannot start the background model-call thread");
            None
        }
    }
}

/// Sets the calling thread's nice value to [`NICE`]. On Linux the nice value
/// belongs to a thread, not to the process, so the live threads keep theirs.
#[cfg(target_os = "linux")]
fn lower_own_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // with a constant value changes nothing but this thread's nice value.
    let outcome = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICE)
    };
    if outcome != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the background thread's priority; challenger calls run at normal priority"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_own_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        // SAFETY: as in lower_own_priority; getpriority only reads.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        }
    }

    #[tokio::test]
    async fn tasks_run_in_order_on_a_thread_of_the_lowest_priority() {
        let lane = BackgroundLane::default();
        let (first, _) = lane
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .expect("the lane runs a task");
        assert_eq!(first.as_deref(), Some("riskhost-background"));
        #[cfg(target_os = "linux")]
        {
            let (nice, _) = lane.run(own_nice).await.expect("the lane runs a task");
            assert_eq!(nice, NICE);
        }
    }

    #[tokio::test]
    async fn a_panicking_task_answers_none_and_the_lane_goes_on() {
        let lane = BackgroundLane::default();
        assert!(lane.run(|| panic!("boom")).await.is_none());
        let (value, _) = lane.run(|| 7).await.expect("the lane still runs");
        assert_eq!(value, 7);
    }

    #[test]
    fn a_task_that_mostly_waited_was_starved() {
        let waited = TaskTimes {
            wall: Duration::from_millis(100),
            cpu: Some(Duration::from_millis(10)),
        };
        let ran = TaskTimes {
            wall: Duration::from_millis(100),
            cpu: Some(Duration::from_millis(90)),
        };
        assert!(waited.starved());
        assert!(!ran.starved());
    }
}
