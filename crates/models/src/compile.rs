//! Compiling a component under a budget of time and memory.
//!
//! Cranelift cannot be interrupted, and a small component can keep it busy
//! for minutes and gigabytes (docs/sandbox.md, "Load time"). So the server
//! compiles in a child process, the same binary's hidden `compile-worker`
//! command, which can be abandoned: the component's bytes go in on stdin,
//! the compiled artifact comes out on stdout, and the parent kills the child
//! when the wall-clock budget runs out. The child bounds its own data
//! memory (`RLIMIT_DATA`: heap and every private writable mapping) to what
//! it had after start-up plus the memory budget before it reads a byte of
//! the component, so the budget is what compiling may take, whatever the
//! binary's own footprint. Not `RLIMIT_AS`: address space counts
//! reservations that hold no memory (each malloc arena reserves 64 MiB, and
//! there are up to eight per core), which would make a budget depend on the
//! machine's core count, and capping arenas slows compilation by half
//! (measured on the Python example). `RLIMIT_CPU` (set by the
//! parent before `exec`) is a backstop should the parent stop watching,
//! and the child dies with its parent (`PR_SET_PDEATHSIG`).
//!
//! The artifact is loaded with `ModelEngine::load_artifact`: it comes from
//! a process of this build, over a pipe only the parent holds, compiled
//! with the engine's own code settings, whose compatibility key the child
//! checks. It is as trusted as code compiled in this process.
//!
//! The one-shot commands (`riskhost score`, `model test`) and unit tests
//! compile in-process ([`Compilation::InProcess`]); both ways run the same
//! shape pre-check first.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use riskhost_engine::{
    CompileSettings, LoadError, LoadedModel, ModelEngine, Precompiler, looks_out_of_memory,
};

/// What compiling one component may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// Wall-clock time, from starting the child to its artifact.
    pub timeout: Duration,
    /// Data memory beyond the child's own at start-up, in MiB.
    pub memory_mib: u64,
}

impl Default for CompileBudget {
    fn default() -> Self {
        CompileBudget {
            timeout: Duration::from_secs(60),
            memory_mib: 2048,
        }
    }
}

/// How the server compiles components.
#[derive(Debug, Clone)]
pub enum Compilation {
    /// In this process, unbounded: the one-shot commands and unit tests.
    InProcess,
    /// In a child process, under a budget.
    Isolated(Isolated),
}

/// A compile-worker command and the budget it runs under.
#[derive(Debug, Clone)]
pub struct Isolated {
    /// The worker program (the running `riskhost` binary) and the
    /// arguments that select its worker command.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The worker's whole environment (nothing of the server's is passed
    /// on): what the program needs to run as a worker, e.g. its allocator's
    /// settings.
    pub env: Vec<(OsString, OsString)>,
    pub budget: CompileBudget,
}

/// Exit codes of the worker, beyond 0 (the artifact is on stdout).
const EXIT_INVALID: i32 = 65;
const EXIT_OUT_OF_MEMORY: i32 = 66;
const EXIT_FAILED: i32 = 70;

/// Bytes of the worker's stderr kept for the error message.
const STDERR_KEPT: usize = 16 << 10;

impl Compilation {
    /// Compiles, links, checks `info()` and warms `bytes` up: the
    /// equivalent of [`ModelEngine::load`], under this compilation's budget.
    pub fn load(&self, engine: &ModelEngine, bytes: &[u8]) -> Result<LoadedModel, LoadError> {
        match self {
            Compilation::InProcess => engine.load(bytes),
            Compilation::Isolated(isolated) => {
                // Refused shapes never cost a process.
                engine.check(bytes)?;
                let started = Instant::now();
                let artifact = isolated.compile(&engine.compile_settings(), bytes)?;
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    bytes = bytes.len(),
                    artifact = artifact.len(),
                    "compiled in a worker"
                );
                // SAFETY: the artifact is the output of this build's
                // Precompiler, given this engine's settings, read from the
                // pipe of the child started just now (see the module doc).
                unsafe { engine.load_artifact(&artifact, ModelEngine::digest(bytes), bytes.len()) }
            }
        }
    }
}

impl Isolated {
    /// The artifact of `bytes`, compiled by a worker under the budget.
    pub fn compile(&self, settings: &CompileSettings, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        let budget = self.budget;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .arg("--settings")
            .arg(settings.to_string())
            .arg("--memory-mib")
            .arg(budget.memory_mib.to_string())
            // Nothing of the server's environment (its settings file, keys)
            // reaches the worker.
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cpu_seconds = cpu_backstop(budget.timeout);
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only async-signal-safe calls (setrlimit, prctl) between
            // fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: cpu_seconds,
                        rlim_max: cpu_seconds.saturating_add(1),
                    };
                    if libc::setrlimit(libc::RLIMIT_CPU, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The spawning thread waits for the child to the end,
                    // so this fires only when the server itself dies.
                    #[cfg(target_os = "linux")]
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            LoadError::Compile(format!(
                "cannot start the compile worker {}: {e}",
                self.program.display()
            ))
        })?;
        let outcome = run_child(&mut child, bytes, budget);
        match outcome {
            Outcome::TimedOut => Err(LoadError::CompileTimeout {
                budget: budget.timeout,
            }),
            Outcome::Exited {
                status,
                stdout,
                stderr,
            } => classify(status, stdout, &stderr, budget, started.elapsed()),
            Outcome::Failed(error) => Err(LoadError::Compile(error)),
        }
    }
}

/// `RLIMIT_CPU` in seconds: the wall-clock budget on every core the
/// compiler may use, plus a second, so only a worker the parent stopped
/// watching ever meets it.
fn cpu_backstop(timeout: Duration) -> u64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    timeout
        .as_secs()
        .saturating_add(1)
        .saturating_mul(cores)
        .saturating_add(1)
}

enum Outcome {
    TimedOut,
    Exited {
        status: ExitStatus,
        stdout: Vec<u8>,
        stderr: String,
    },
    Failed(String),
}

/// Feeds `bytes` to the child and collects its output until it exits or
/// the budget's time is up (then it is killed).
fn run_child(child: &mut Child, bytes: &[u8], budget: CompileBudget) -> Outcome {
    let deadline = Instant::now() + budget.timeout;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill(child);
        return Outcome::Failed("the compile worker's pipes are missing".into());
    };
    // An artifact larger than the memory budget cannot have been made
    // within it; the cap keeps a confused child from filling our memory.
    let artifact_cap = budget.memory_mib.saturating_mul(1 << 20);
    std::thread::scope(|scope| {
        // Written from its own thread: a child that stops reading (it is
        // busy failing) must not block the wait below.
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let out = scope.spawn(move || {
            let mut artifact = Vec::new();
            let read = stdout.take(artifact_cap).read_to_end(&mut artifact);
            read.map(|_| artifact)
        });
        let err = scope.spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(STDERR_KEPT as u64).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        });
        let status = match wait_until(child, deadline) {
            Ok(Some(status)) => status,
            waited => {
                // Killed: its pipes close, so the readers end.
                kill(child);
                let _ = (out.join(), err.join());
                return match waited {
                    Err(e) => Outcome::Failed(format!("cannot wait for the compile worker: {e}")),
                    _ => Outcome::TimedOut,
                };
            }
        };
        let stderr = err.join().unwrap_or_default();
        match out.join() {
            Ok(Ok(stdout)) => Outcome::Exited {
                status,
                stdout,
                stderr,
            },
            Ok(Err(e)) => Outcome::Failed(format!("cannot read the compile worker's output: {e}")),
            Err(_) => Outcome::Failed("reading the compile worker's output panicked".into()),
        }
    })
}

/// The child's exit status, or `None` once `deadline` has passed. Polls,
/// starting at a millisecond (small models compile in tens of them), so no
/// second thread holds the child.
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Turns the worker's exit into the artifact or the reason there is none.
fn classify(
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: &str,
    budget: CompileBudget,
    elapsed: Duration,
) -> Result<Vec<u8>, LoadError> {
    let message = stderr.trim();
    let memory = || LoadError::CompileMemory {
        budget_mib: budget.memory_mib,
    };
    if status.success() {
        if stdout.is_empty() {
            return Err(LoadError::Compile(
                "the compile worker wrote no artifact".into(),
            ));
        }
        return Ok(stdout);
    }
    match status.code() {
        Some(EXIT_INVALID) => return Err(LoadError::NotAComponent(message.to_owned())),
        Some(EXIT_OUT_OF_MEMORY) => return Err(memory()),
        Some(_) if looks_out_of_memory(message) => return Err(memory()),
        Some(code) => {
            return Err(LoadError::Compile(format!(
                "the compile worker exited with status {code}: {}",
                last_line(message)
            )));
        }
        None => {}
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        match status.signal() {
            // The CPU backstop, should the wait have overrun it.
            Some(libc::SIGXCPU) => {
                return Err(LoadError::CompileTimeout {
                    budget: budget.timeout,
                });
            }
            // An allocation failure aborts; the kernel's OOM killer kills.
            Some(libc::SIGABRT) if looks_out_of_memory(message) => return Err(memory()),
            Some(libc::SIGKILL) if elapsed >= budget.timeout => {
                return Err(LoadError::CompileTimeout {
                    budget: budget.timeout,
                });
            }
            Some(libc::SIGKILL) => return Err(memory()),
            // A stack or heap mapping refused under the address-space cap.
            Some(libc::SIGSEGV) | Some(libc::SIGBUS) => return Err(memory()),
            Some(signal) => {
                return Err(LoadError::Compile(format!(
                    "the compile worker was killed by signal {signal}: {}",
                    last_line(message)
                )));
            }
            None => {}
        }
    }
    Err(LoadError::Compile(format!(
        "the compile worker failed ({status}): {}",
        last_line(message)
    )))
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
}

/// The worker side: compiles the component on `input` to `output` under
/// `memory_mib` of data memory beyond what the process holds now, and
/// returns the exit code ([`Isolated::compile`] reads both). `settings` is
/// [`CompileSettings`] as text.
pub fn run_worker(settings: &str, memory_mib: u64, input: impl Read, output: impl Write) -> i32 {
    let settings: CompileSettings = match settings.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILED;
        }
    };
    // The engine first: its set-up is the worker's, not the component's.
    let precompiler = match Precompiler::new(&settings) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILED;
        }
    };
    if let Err(e) = limit_data(memory_mib) {
        eprintln!("cannot limit the compile worker's memory: {e}");
        return EXIT_FAILED;
    }
    let mut bytes = Vec::new();
    let mut input = input;
    if let Err(e) = input.read_to_end(&mut bytes) {
        eprintln!("cannot read the component: {e}");
        return EXIT_FAILED;
    }
    match precompiler.precompile(&bytes) {
        Ok(artifact) => {
            let mut output = output;
            match output.write_all(&artifact).and_then(|()| output.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("cannot write the artifact: {e}");
                    EXIT_FAILED
                }
            }
        }
        Err(LoadError::NotAComponent(message)) => {
            eprintln!("{message}");
            EXIT_INVALID
        }
        Err(error) => {
            let message = error.to_string();
            eprintln!("{message}");
            if looks_out_of_memory(&message) {
                EXIT_OUT_OF_MEMORY
            } else {
                EXIT_FAILED
            }
        }
    }
}

/// Caps this process's data memory at its current size plus `mib`.
fn limit_data(mib: u64) -> std::io::Result<()> {
    let extra = mib.saturating_mul(1 << 20);
    let limit = current_data_bytes().unwrap_or(0).saturating_add(extra);
    let limit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a plain system call on a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_DATA, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What `RLIMIT_DATA` counts of this process now (Linux: `VmData` of
/// `/proc/self/status`); where it is unknown, the budget is all of it.
fn current_data_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmData:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        ExitStatus::from_raw(code << 8)
    }

    fn signal(signal: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn a_worker_exit_names_the_limit_it_met() {
        let budget = CompileBudget {
            timeout: Duration::from_millis(1500),
            memory_mib: 256,
        };
        let short = Duration::from_millis(10);
        let text =
            |r: Result<Vec<u8>, LoadError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            classify(exit(0), vec![1], "", budget, short).ok(),
            Some(vec![1])
        );
        assert!(
            text(classify(exit(66), vec![], "", budget, short))
                .contains("compile budget of 256 MiB")
        );
        assert!(
            text(classify(
                signal(libc::SIGABRT),
                vec![],
                "memory allocation of 8 bytes failed",
                budget,
                short
            ))
            .contains("compile budget of 256 MiB")
        );
        assert!(
            text(classify(signal(libc::SIGXCPU), vec![], "", budget, short))
                .contains("compile budget of 1500 ms")
        );
        assert!(
            text(classify(exit(65), vec![], "bad magic", budget, short))
                .contains("not a WebAssembly component: bad magic")
        );
        assert!(
            text(classify(exit(70), vec![], "boom\n", budget, short)).contains("status 70: boom")
        );
        assert!(text(classify(exit(0), vec![], "", budget, short)).contains("no artifact"));
    }
}
