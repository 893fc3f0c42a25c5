//! The wasmtime engine: compiles, validates and calls model components.
//!
//! One `ModelEngine` per process owns the wasmtime `Engine` (pooling
//! allocator, epoch interruption), the WASI linker of the sandbox and the
//! epoch ticker thread. Loading a model compiles it, links it against the
//! sandbox (`InstancePre`), reads and checks `info()` and runs a warm-up call;
//! only a model that passes all of that is ever served. Each batch call gets a
//! fresh instance from the pool and is stopped at its deadline.
//!
//! Everything here is blocking and CPU-bound: callers run it on a blocking
//! thread, never on the async runtime.

pub mod bindings;
mod diagnostics;
pub mod sandbox;
mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use self::sandbox::{CapturedOutput, Determinism, SandboxState};
pub use self::validate::{
    DataDescription, ModelDescription, ParamDescription, ParamError, unit_name,
};
use bindings::{Job, MarketData, ModelError, Score};

/// How often the ticker advances the epoch; the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Limits every model call runs under.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory cap per instance.
    pub memory_bytes: usize,
    /// Deadline of a batch call: `base + per_job × jobs`, at most `cap`.
    pub deadline_base: Duration,
    pub deadline_per_job: Duration,
    pub deadline_cap: Duration,
    /// Largest accepted `.wasm` file.
    pub max_component_bytes: usize,
    /// Most breakdown entries one score may carry.
    pub max_breakdown_entries: usize,
    /// Longest string (contribution name or error message) a model may return.
    pub max_string_bytes: usize,
    /// Bytes of stdout and of stderr kept per call for the host's log.
    pub captured_output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 64 << 20,
            deadline_base: Duration::from_millis(1000),
            deadline_per_job: Duration::from_millis(2),
            deadline_cap: Duration::from_secs(30),
            max_component_bytes: 64 << 20,
            max_breakdown_entries: 10_000,
            max_string_bytes: 4096,
            captured_output_bytes: 8 * 1024,
        }
    }
}

impl SandboxLimits {
    pub fn deadline_for(&self, jobs: usize) -> Duration {
        let scaled = self.deadline_base
            + self
                .deadline_per_job
                .saturating_mul(u32::try_from(jobs).unwrap_or(u32::MAX));
        scaled.min(self.deadline_cap)
    }
}

/// Why a component could not be loaded. Messages are for the quant who
/// shipped it: they say what is wrong and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("the file is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the file is empty")]
    Empty,
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component imports something the sandbox does not provide: {0}")]
    UnsupportedImport(String),
    #[error(
        "the component does not implement world `model` of riskhost:model@1.0.0 (it must export `info` and `score-batch` with the contract's types): {0}"
    )]
    Contract(String),
    #[error("info() is invalid: {0}")]
    InvalidInfo(String),
    #[error("info() failed: {0}")]
    InfoCall(CallError),
    #[error("the warm-up call failed: {0}")]
    WarmUp(String),
}

/// Why a batch call failed as a whole. The instance is discarded in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the model ran past its deadline of {} ms and was stopped", .0.as_millis())]
    Timeout(Duration),
    #[error("the model exceeded its memory limit of {limit_bytes} bytes")]
    MemoryExhausted { limit_bytes: usize },
    #[error("the model overflowed its stack (unbounded recursion?)")]
    StackOverflow,
    #[error("the model trapped: {0}")]
    Trap(String),
    #[error("the model's output is too large: {0}")]
    OutputTooLarge(String),
    #[error("the model returned {got} results for {expected} jobs")]
    ResultCount { expected: usize, got: usize },
    #[error("no instance could be created: {0}")]
    Instantiate(String),
}

impl CallError {
    /// The stable error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "model_timeout",
            CallError::MemoryExhausted { .. }
            | CallError::StackOverflow
            | CallError::OutputTooLarge(_) => "model_resource_exhausted",
            CallError::Trap(_) | CallError::ResultCount { .. } => "model_trap",
            CallError::Instantiate(_) => "model_unavailable",
        }
    }
}

/// A validated model version, ready to instantiate.
pub struct LoadedModel {
    pub description: ModelDescription,
    /// `sha256:<hex>` of the component bytes: the version's identity.
    pub digest: String,
    pub size_bytes: usize,
    pre: bindings::ModelPre<SandboxState>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.description.name)
            .field("version", &self.description.version)
            .field("digest", &self.digest)
            .finish()
    }
}

impl LoadedModel {
    pub fn name(&self) -> &str {
        &self.description.name
    }

    pub fn version(&self) -> &str {
        &self.description.version
    }

    /// The compiled component, e.g. to list its imports and exports.
    pub fn component(&self) -> &Component {
        self.pre.instance_pre().component()
    }
}

/// The result of one batch call plus what it cost.
pub struct CallOutcome {
    pub results: Vec<Result<Score, ModelError>>,
    pub elapsed: Duration,
    /// Peak linear memory of the instance (all its memories together).
    pub peak_memory_bytes: usize,
}

/// Owns the wasmtime engine, the sandbox linker and the epoch ticker.
pub struct ModelEngine {
    engine: Engine,
    linker: Linker<SandboxState>,
    limits: SandboxLimits,
    ticker: Option<EpochTicker>,
}

impl ModelEngine {
    pub fn new(limits: SandboxLimits) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        // Enough slots for every core's concurrent calls plus loads, with room
        // for components (e.g. Python ones) made of several core instances.
        pool.total_component_instances(256)
            .total_core_instances(2048)
            .total_memories(512)
            .total_tables(2048)
            .max_memories_per_component(16)
            .max_tables_per_component(64)
            .max_core_instances_per_component(64)
            .max_memory_size(limits.memory_bytes.max(64 << 20))
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            // Reusing a slot keeps this much memory mapped instead of
            // re-faulting it on every call; together with pagemap scanning this
            // is what makes a fresh instance per call cost microseconds.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(512 << 10)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot create the wasm engine: {e}"))?;

        let mut linker = Linker::<SandboxState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("cannot link WASI into the sandbox: {e}"))?;

        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker thread: {e}"))?;
        Ok(ModelEngine {
            engine,
            linker,
            limits,
            ticker: Some(ticker),
        })
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    pub fn wasmtime_engine(&self) -> &Engine {
        &self.engine
    }

    /// The sha256 digest of component bytes, as `sha256:<hex>`.
    pub fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Compiles, links, checks `info()` and warms a component up.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedModel, LoadError> {
        if bytes.is_empty() {
            return Err(LoadError::Empty);
        }
        if bytes.len() > self.limits.max_component_bytes {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_component_bytes,
            });
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotAComponent(
                "the file does not start with the WebAssembly magic bytes `\\0asm`; \
                 is it the .wasm a model build produced?"
                    .into(),
            ));
        }
        let digest = Self::digest(bytes);
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            let message = format!("{e:#}");
            if wasmparser_says_core_module(bytes) {
                LoadError::NotAComponent(format!(
                    "this is a core wasm module; build for wasm32-wasip2 (or run `wasm-tools component new`) to get a component ({message})"
                ))
            } else {
                LoadError::NotAComponent(message)
            }
        })?;
        self.load_compiled(component, digest, bytes.len())
    }

    fn load_compiled(
        &self,
        component: Component,
        digest: String,
        size_bytes: usize,
    ) -> Result<LoadedModel, LoadError> {
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::UnsupportedImport(format!("{e:#}")))?;
        let pre = bindings::ModelPre::new(instance_pre)
            .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let info = self.call_info(&pre).map_err(LoadError::InfoCall)?;
        let description = validate::describe(info).map_err(LoadError::InvalidInfo)?;
        let model = LoadedModel {
            description,
            digest,
            size_bytes,
            pre,
        };
        self.warm_up(&model)?;
        Ok(model)
    }

    fn new_store(
        &self,
        determinism: Determinism,
        output: &CapturedOutput,
        deadline: Duration,
    ) -> Store<SandboxState> {
        let mut store = Store::new(
            &self.engine,
            SandboxState::new(determinism, self.limits.memory_bytes, output),
        );
        store.limiter(|state| &mut state.limiter);
        let ticks = deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        store
    }

    fn call_info(
        &self,
        pre: &bindings::ModelPre<SandboxState>,
    ) -> Result<bindings::ModelInfo, CallError> {
        let output = CapturedOutput::new(self.limits.captured_output_bytes);
        let deadline = self.limits.deadline_base;
        let mut store = self.new_store(
            Determinism {
                as_of_unix_seconds: 0,
                seed: 0,
            },
            &output,
            deadline,
        );
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(e, &store, deadline, &output))?;
        let info = instance
            .call_info(&mut store)
            .map_err(|e| self.classify(e, &store, deadline, &output))?;
        self.log_output("<loading>", &output);
        Ok(info)
    }

    /// Scores a batch in a fresh instance under the sandbox limits.
    pub fn call(
        &self,
        model: &LoadedModel,
        market: &MarketData,
        jobs: &[Job],
        determinism: Determinism,
    ) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let output = CapturedOutput::new(self.limits.captured_output_bytes);
        let deadline = self.limits.deadline_for(jobs.len());
        let mut store = self.new_store(determinism, &output, deadline);
        let result = model
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_score_batch(&mut store, market, jobs));
        // Classify before logging: logging drains the output, and a trap's
        // message quotes what the model printed last.
        let result = result.map_err(|e| self.classify(e, &store, deadline, &output));
        self.log_output(model.name(), &output);
        let results = result?;
        if results.len() != jobs.len() {
            return Err(CallError::ResultCount {
                expected: jobs.len(),
                got: results.len(),
            });
        }
        self.check_output(&results)?;
        Ok(CallOutcome {
            results,
            elapsed: started.elapsed(),
            peak_memory_bytes: store.data().limiter.peak_bytes,
        })
    }

    fn check_output(&self, results: &[Result<Score, ModelError>]) -> Result<(), CallError> {
        let max_string = self.limits.max_string_bytes;
        for result in results {
            match result {
                Ok(score) => {
                    if score.breakdown.len() > self.limits.max_breakdown_entries {
                        return Err(CallError::OutputTooLarge(format!(
                            "a score has {} breakdown entries; the limit is {}",
                            score.breakdown.len(),
                            self.limits.max_breakdown_entries
                        )));
                    }
                    if let Some(c) = score.breakdown.iter().find(|c| c.name.len() > max_string) {
                        return Err(CallError::OutputTooLarge(format!(
                            "a breakdown name is {} bytes; the limit is {max_string}",
                            c.name.len()
                        )));
                    }
                }
                Err(e) => {
                    let message = match e {
                        ModelError::InvalidInput(m)
                        | ModelError::InsufficientData(m)
                        | ModelError::Internal(m) => m,
                    };
                    if message.len() > max_string {
                        return Err(CallError::OutputTooLarge(format!(
                            "an error message is {} bytes; the limit is {max_string}",
                            message.len()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns a wasmtime error into the reason the call failed, using what the
    /// store saw (memory cap hit) and what the model printed (panic message).
    fn classify(
        &self,
        error: wasmtime::Error,
        store: &Store<SandboxState>,
        deadline: Duration,
        output: &CapturedOutput,
    ) -> CallError {
        if store.data().limiter.memory_limit_hit {
            return CallError::MemoryExhausted {
                limit_bytes: self.limits.memory_bytes,
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(deadline),
            Some(Trap::StackOverflow) => CallError::StackOverflow,
            Some(Trap::AllocationTooLarge) => CallError::MemoryExhausted {
                limit_bytes: self.limits.memory_bytes,
            },
            Some(trap) => {
                // Read without draining: the host's log gets the output too.
                let last_words =
                    diagnostics::last_words(&output.stderr.contents()).unwrap_or_default();
                let frames = error
                    .downcast_ref::<wasmtime::WasmBacktrace>()
                    .map(|bt| {
                        bt.frames()
                            .iter()
                            .filter_map(|f| f.func_name())
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" <- ")
                    })
                    .unwrap_or_default();
                let mut message = trap.to_string();
                if !frames.is_empty() {
                    message.push_str(&format!(" in {frames}"));
                }
                if !last_words.is_empty() {
                    message.push_str(&format!("; the model said: {}", truncate(&last_words, 512)));
                }
                CallError::Trap(message)
            }
            None => {
                let message = format!("{error:#}");
                if message.contains("pooling") || message.contains("maximum concurrent") {
                    CallError::Instantiate(message)
                } else {
                    CallError::Trap(truncate(&message, 1024).to_owned())
                }
            }
        }
    }

    fn log_output(&self, model: &str, output: &CapturedOutput) {
        for (stream, pipe) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            let (text, dropped) = pipe.take();
            if !text.is_empty() {
                crate::telemetry::model_output(model, stream, &text, dropped);
            }
        }
    }

    fn warm_up(&self, model: &LoadedModel) -> Result<(), LoadError> {
        let (market, jobs) = validate::warm_up_batch(&model.description);
        let outcome = self
            .call(
                model,
                &market,
                &jobs,
                Determinism {
                    as_of_unix_seconds: 0,
                    seed: 0,
                },
            )
            .map_err(|e| LoadError::WarmUp(e.to_string()))?;
        match outcome.results.into_iter().next() {
            Some(Ok(score)) if score.value.is_finite() => Ok(()),
            Some(Ok(score)) => Err(LoadError::WarmUp(format!(
                "the score is {} (not finite)",
                score.value
            ))),
            Some(Err(e)) => {
                let (kind, message) = match &e {
                    ModelError::InvalidInput(m) => ("invalid-input", m),
                    ModelError::InsufficientData(m) => ("insufficient-data", m),
                    ModelError::Internal(m) => ("internal", m),
                };
                Err(LoadError::WarmUp(format!(
                    "the model answered {kind} ({message}) to the warm-up job: two synthetic \
                     instruments WARMUP-A (100 units) and WARMUP-B (-50), the lookback its \
                     info() asks for at default parameters, every parameter at its default; \
                     a model must score that"
                )))
            }
            None => Err(LoadError::WarmUp("no result".into())),
        }
    }
}

impl Drop for ModelEngine {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A core module starts with the same magic as a component but a different
/// version/layer field (1 vs 0x0d).
fn wasmparser_says_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// One thread advancing the engine's epoch; deadlines are counted in ticks.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("riskhost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker { stop, handle })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}
