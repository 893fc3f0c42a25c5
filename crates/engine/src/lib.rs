//! The wasmtime engine: compiles, validates and calls model components.
//!
//! One `ModelEngine` per process owns the wasmtime `Engine` (pooling
//! allocator, epoch interruption), the WASI linker of the sandbox and the
//! epoch ticker thread. Loading a model compiles it, links it against the
//! sandbox (`InstancePre`), reads and checks `info()` and runs a warm-up call;
//! only a model that passes all of that is ever served. Each batch call gets a
//! fresh instance from the pool and runs under its model's limits (deadline,
//! memory, stack, optional fuel, output budget; see `limits.rs`); whatever
//! stops it becomes a `CallError` that says why.
//!
//! Compilation is reachable two ways: [`ModelEngine::load`] compiles in this
//! process; [`ModelEngine::check`], a [`Precompiler`] built from
//! [`ModelEngine::compile_settings`] (in another process, whose time and
//! memory its caller bounds: `riskhost_models::Compilation`) and
//! [`ModelEngine::load_artifact`] do the same work in three steps. Either
//! way the component passes the shape pre-check (`shape.rs`) first. The
//! engine itself spawns nothing.
//!
//! Everything here is blocking and CPU-bound: callers run it on a blocking
//! thread, never on the async runtime.
//!
//! The crate's API is what this file defines and re-exports, and the
//! [`bindings`] module: the one public module, because the contract's
//! generated types (`Job`, `Score`, `ModelError`, …) are named by that path
//! so they never collide with the host's own.

pub mod bindings;
mod cputime;
mod diagnostics;
mod limits;
mod name;
mod output_log;
mod sandbox;
mod shape;
mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTableError};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use self::cputime::thread_cpu_time;
pub use self::limits::{
    FuelBudget, LimitOverrides, LimitsParseError, MAX_MEMORY_MIB, ModelLimits, ModelLimitsArg,
    SandboxLimits,
};
pub use self::sandbox::Determinism;
use self::sandbox::{CapturedOutput, SandboxState};
pub use self::shape::{ShapeLimits, ShapeStats};
pub use self::validate::{
    DataDescription, ModelDescription, ParamDescription, ParamError, unit_name,
};
use bindings::{Job, MarketData, ModelError, Score};

pub use self::name::{InvalidModelName, MAX_MODEL_NAME_BYTES, ModelName};

/// Why the engine itself could not be set up (not a model's fault).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(String);

/// How often the ticker advances the epoch; the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

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
    #[error("the precompiled artifact is unusable: {0}")]
    Precompiled(String),
    #[error("a function is too costly to compile: {0}")]
    TooCostly(String),
    #[error(
        "compiling took longer than the compile budget of {} ms (--compile-timeout-ms) and was stopped",
        .budget.as_millis()
    )]
    CompileTimeout { budget: Duration },
    #[error(
        "compiling needed more than the compile budget of {budget_mib} MiB (--compile-memory-mib) and was stopped"
    )]
    CompileMemory { budget_mib: u64 },
    #[error("compiling failed: {0}")]
    Compile(String),
}

/// Why a batch call failed as a whole. The instance is discarded in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("the model ran past its deadline of {} ms and was stopped", .0.as_millis())]
    Timeout(Duration),
    #[error("the model exceeded its memory limit of {limit_bytes} bytes")]
    MemoryExhausted { limit_bytes: usize },
    #[error("fuel exhausted: the model used up its budget of {budget} fuel units and was stopped")]
    FuelExhausted { budget: u64 },
    #[error("the model overflowed its stack (unbounded recursion?)")]
    StackOverflow,
    #[error(
        "the model held more than {limit} WASI resources (streams, pollables, sockets) at once; \
         the cap is proportional to its memory cap"
    )]
    TooManyResources { limit: usize },
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
    /// Every code [`CallError::code`] answers: the `kind` label values of
    /// `riskhost_model_errors_total`, which exist at 0 from a model's load.
    pub const CODES: [&'static str; 4] = [
        "model_timeout",
        "model_resource_exhausted",
        "model_trap",
        "model_unavailable",
    ];

    /// The stable error code clients see.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "model_timeout",
            CallError::MemoryExhausted { .. }
            | CallError::FuelExhausted { .. }
            | CallError::StackOverflow
            | CallError::TooManyResources { .. }
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
    /// The limits its calls run under (defaults plus its override).
    pub limits: ModelLimits,
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

    /// The compiled machine code, for the artifact cache; loads back with
    /// [`ModelEngine::load_precompiled`] on an engine of the same
    /// [`ModelEngine::compatibility_key`].
    pub fn serialize_compiled(&self) -> Result<Vec<u8>, String> {
        self.pre
            .instance_pre()
            .component()
            .serialize()
            .map_err(|e| format!("{e:#}"))
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
    /// CPU time of the calling thread during the call, where the OS tells.
    pub cpu_time: Option<Duration>,
    /// Fuel the call consumed, when the model runs with a fuel budget.
    pub fuel_consumed: Option<u64>,
    /// Peak linear memory of the instance (all its memories together).
    pub peak_memory_bytes: usize,
}

/// What one call may spend, fixed when its store is created.
struct CallBudget {
    deadline: Duration,
    fuel: Option<u64>,
    memory_bytes: usize,
    output_bytes: usize,
}

/// Whether a call's cost is recorded in the model's metrics (not for the
/// warm-up, which is the host's call, not a client's).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Metering {
    Record,
    Skip,
}

/// Owns the wasmtime engine, the sandbox linker and the epoch ticker.
pub struct ModelEngine {
    engine: Engine,
    linker: Linker<SandboxState>,
    limits: SandboxLimits,
    ticker: Option<EpochTicker>,
}

impl ModelEngine {
    pub fn new(limits: SandboxLimits) -> Result<Self, EngineError> {
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
            // Every slot must fit the largest per-model cap; the limiter
            // enforces each model's own cap below that.
            .max_memory_size(limits.largest_memory_bytes().max(64 << 20))
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            // Reusing a slot keeps this much memory mapped instead of
            // re-faulting it on every call; together with pagemap scanning this
            // is what makes a fresh instance per call cost microseconds.
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = code_config(limits.meters_fuel());
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(|e| EngineError(format!("cannot create the wasm engine: {e}")))?;

        let mut linker = Linker::<SandboxState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .and_then(|()| sandbox::link_deadline_bounded_poll(&mut linker))
            .map_err(|e| EngineError(format!("cannot link WASI into the sandbox: {e}")))?;

        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| EngineError(format!("cannot start the epoch ticker thread: {e}")))?;
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

    /// What a [`Precompiler`] needs to compile code this engine loads.
    pub fn compile_settings(&self) -> CompileSettings {
        CompileSettings {
            meters_fuel: self.limits.meters_fuel(),
            key: self.compatibility_key(),
        }
    }

    /// The checks made before compiling, cheap and in this process: size,
    /// magic bytes and the shape of every function (`shape.rs`).
    pub fn check(&self, bytes: &[u8]) -> Result<ShapeStats, LoadError> {
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
        shape::check(bytes, &self.limits.shape).map_err(LoadError::TooCostly)
    }

    /// Loads what a [`Precompiler`] made of a component, validating it like
    /// a fresh one. `digest` and `size_bytes` describe the component.
    ///
    /// # Safety
    ///
    /// wasmtime runs the artifact's machine code without checking it, so it
    /// must come from a [`Precompiler`] of this build, given this engine's
    /// [`ModelEngine::compile_settings`], and reach the caller through a
    /// channel nobody else can write (a pipe from the child the caller
    /// started). The format and settings are checked by wasmtime.
    pub unsafe fn load_artifact(
        &self,
        artifact: &[u8],
        digest: String,
        size_bytes: usize,
    ) -> Result<LoadedModel, LoadError> {
        // SAFETY: the caller guarantees the bytes are our own compiler's output.
        let component = unsafe { Component::deserialize(&self.engine, artifact) }.map_err(|e| {
            LoadError::Compile(format!("the compiled artifact does not load: {e:#}"))
        })?;
        self.load_compiled(component, digest, size_bytes)
    }

    /// Names the compiled-code format of this engine: the wasmtime version,
    /// target and every setting that shapes compiled code. Artifacts compiled
    /// under one key only ever load under the same key.
    pub fn compatibility_key(&self) -> String {
        compatibility_key(&self.engine)
    }

    /// Loads a component compiled earlier by [`LoadedModel::serialize_compiled`],
    /// skipping compilation but not validation: it is linked, its `info()`
    /// checked and warmed up like a fresh one. `digest` and `size_bytes`
    /// describe the component it was compiled from.
    ///
    /// # Safety
    ///
    /// wasmtime maps the file and runs its machine code without checking
    /// it, so `path` must be a file this riskhost build wrote itself from a
    /// component that passed validation, in a directory nobody else can
    /// write (see `store.rs`). A file from anywhere else is arbitrary code
    /// running outside the sandbox.
    pub unsafe fn load_precompiled(
        &self,
        path: &std::path::Path,
        digest: String,
        size_bytes: usize,
    ) -> Result<LoadedModel, LoadError> {
        // SAFETY: the caller guarantees the file is one of our own artifacts.
        let component = unsafe { Component::deserialize_file(&self.engine, path) }
            .map_err(|e| LoadError::Precompiled(format!("{e:#}")))?;
        self.load_compiled(component, digest, size_bytes)
    }

    /// Compiles (in this process, without a budget), links, checks
    /// `info()` and warms a component up.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedModel, LoadError> {
        self.check(bytes)?;
        let digest = Self::digest(bytes);
        let component =
            Component::new(&self.engine, bytes).map_err(|e| compile_error(bytes, &e))?;
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
            .map_err(|e| self.unsupported_import(&component, &e))?;
        let pre = bindings::ModelPre::new(instance_pre)
            .map_err(|e| LoadError::Contract(format!("{e:#}")))?;
        let info = self.call_info(&pre).map_err(LoadError::InfoCall)?;
        let description = validate::describe(info).map_err(LoadError::InvalidInfo)?;
        let limits = self.limits.for_model(&description.name);
        let model = LoadedModel {
            description,
            digest,
            size_bytes,
            limits,
            pre,
        };
        self.warm_up(&model)?;
        Ok(model)
    }

    /// Names the imports no sandbox provides: anything but WASI 0.2. Falls
    /// back to wasmtime's message when every import looks like WASI (e.g. a
    /// WASI version newer than the host's).
    fn unsupported_import(&self, component: &Component, error: &wasmtime::Error) -> LoadError {
        let foreign: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name)
            .filter(|name| !SANDBOX_IMPORTS.iter().any(|p| name.starts_with(p)))
            .map(|name| format!("`{name}`"))
            .collect();
        if foreign.is_empty() {
            return LoadError::UnsupportedImport(format!("{error:#}"));
        }
        LoadError::UnsupportedImport(format!(
            "{}; a model may import only WASI 0.2 ({})",
            foreign.join(", "),
            SANDBOX_IMPORTS
                .iter()
                .filter(|p| p.starts_with("wasi:"))
                .map(|p| p.trim_end_matches('/'))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn new_store(
        &self,
        determinism: Determinism,
        output: &CapturedOutput,
        limits: &ModelLimits,
        jobs: usize,
    ) -> (Store<SandboxState>, CallBudget) {
        let budget = CallBudget {
            deadline: limits.deadline_for(jobs),
            fuel: limits.fuel_for(jobs),
            memory_bytes: limits.memory_bytes,
            output_bytes: limits.output_budget(jobs),
        };
        let mut store = Store::new(
            &self.engine,
            SandboxState::new(
                determinism,
                budget.memory_bytes,
                Instant::now() + budget.deadline,
                output,
            ),
        );
        store.limiter(|state| &mut state.limiter);
        let ticks = budget.deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        if self.limits.meters_fuel() {
            // Only fails when fuel is off, which meters_fuel() rules out; a
            // model without a budget of its own runs unmetered in practice.
            let _ = store.set_fuel(budget.fuel.unwrap_or(u64::MAX));
        }
        // Results are copied out of the instance under this byte budget, so
        // an oversized answer fails while it is read, not after the host has
        // allocated a copy of it.
        store.set_hostcall_fuel(budget.output_bytes);
        (store, budget)
    }

    fn call_info(
        &self,
        pre: &bindings::ModelPre<SandboxState>,
    ) -> Result<bindings::ModelInfo, CallError> {
        let output = CapturedOutput::new(self.limits.captured_output_bytes);
        let (mut store, budget) = self.new_store(
            Determinism {
                as_of_unix_seconds: 0,
                seed: 0,
            },
            &output,
            &self.limits.for_loading(),
            0,
        );
        let result = pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_info(&mut store));
        let info = result.map_err(|e| self.classify(e, &store, &budget, &output));
        self.log_output("<loading>", &output);
        info
    }

    /// Scores a batch in a fresh instance under the model's limits.
    pub fn call(
        &self,
        model: &LoadedModel,
        market: &MarketData,
        jobs: &[Job],
        determinism: Determinism,
    ) -> Result<CallOutcome, CallError> {
        self.call_metered(model, market, jobs, determinism, Metering::Record)
    }

    fn call_metered(
        &self,
        model: &LoadedModel,
        market: &MarketData,
        jobs: &[Job],
        determinism: Determinism,
        metering: Metering,
    ) -> Result<CallOutcome, CallError> {
        let started = Instant::now();
        let cpu_started = cputime::thread_cpu_time();
        let output = CapturedOutput::new(self.limits.captured_output_bytes);
        let (mut store, budget) = self.new_store(determinism, &output, &model.limits, jobs.len());
        let result = model
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_score_batch(&mut store, market, jobs));
        // Classify before logging: logging drains the output, and a trap's
        // message quotes what the model printed last.
        let cpu_time = cpu_started
            .zip(cputime::thread_cpu_time())
            .map(|(before, after)| after.saturating_sub(before));
        let fuel_consumed = budget
            .fuel
            .zip(store.get_fuel().ok())
            .map(|(given, left)| given.saturating_sub(left));
        if metering == Metering::Record {
            let labels = [
                ("model", model.name().to_owned()),
                ("version", model.version().to_owned()),
            ];
            if let Some(cpu) = cpu_time {
                metrics::histogram!("riskhost_model_cpu_seconds", &labels)
                    .record(cpu.as_secs_f64());
            }
            if let Some(fuel) = fuel_consumed {
                metrics::histogram!("riskhost_model_fuel_consumed", &labels).record(fuel as f64);
            }
        }
        let result = result.map_err(|e| self.classify(e, &store, &budget, &output));
        self.log_output(model.name(), &output);
        let results = result?;
        if results.len() != jobs.len() {
            return Err(CallError::ResultCount {
                expected: jobs.len(),
                got: results.len(),
            });
        }
        self.check_output(&results)?;
        let results = results
            .into_iter()
            .zip(jobs)
            .enumerate()
            .map(|(index, (result, job))| result.and_then(|score| finite(score, index, job)))
            .collect();
        Ok(CallOutcome {
            results,
            elapsed: started.elapsed(),
            cpu_time,
            fuel_consumed,
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
        budget: &CallBudget,
        output: &CapturedOutput,
    ) -> CallError {
        let memory_exhausted = CallError::MemoryExhausted {
            limit_bytes: budget.memory_bytes,
        };
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(budget.deadline),
            Some(Trap::OutOfFuel) => CallError::FuelExhausted {
                budget: budget.fuel.unwrap_or(u64::MAX),
            },
            Some(Trap::StackOverflow) => CallError::StackOverflow,
            Some(Trap::AllocationTooLarge) => memory_exhausted,
            // A refused memory.grow usually ends in an abort (Rust's
            // allocation-failure handler), i.e. some other trap.
            Some(_) if store.data().limiter.memory_limit_hit => memory_exhausted,
            Some(trap) => {
                // Read without draining: the host's log gets the output too.
                let stderr = output.stderr.contents();
                CallError::Trap(trap_message(trap, &error, &stderr))
            }
            None => {
                let message = format!("{error:#}");
                if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
                    CallError::TooManyResources {
                        limit: sandbox::resource_table_capacity(budget.memory_bytes),
                    }
                } else if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    CallError::Trap(format!(
                        "the model called exit (status {}) instead of returning",
                        exit.0
                    ))
                } else if store.data().limiter.memory_limit_hit {
                    memory_exhausted
                } else if message.contains("fuel allocated for hostcalls") {
                    // wasmtime's hostcall fuel ran out while lifting the results.
                    CallError::OutputTooLarge(format!(
                        "the results exceed the call's budget of {} bytes",
                        budget.output_bytes
                    ))
                } else if message.contains("pooling") || message.contains("maximum concurrent") {
                    CallError::Instantiate(message)
                } else {
                    // The root cause without wasmtime's multi-line backtrace.
                    CallError::Trap(truncate(&error.root_cause().to_string(), 1024).to_owned())
                }
            }
        }
    }

    fn log_output(&self, model: &str, output: &CapturedOutput) {
        for (stream, pipe) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            let (text, dropped) = pipe.take();
            if !text.is_empty() {
                output_log::model_output(model, stream, &text, dropped);
            }
        }
    }

    fn warm_up(&self, model: &LoadedModel) -> Result<(), LoadError> {
        let (market, jobs) = validate::warm_up_batch(&model.description);
        let outcome = self
            .call_metered(
                model,
                &market,
                &jobs,
                Determinism {
                    as_of_unix_seconds: 0,
                    seed: 0,
                },
                Metering::Skip,
            )
            .map_err(|e| LoadError::WarmUp(e.to_string()))?;
        // A non-finite score is already an internal error (`finite`).
        match outcome.results.into_iter().next() {
            Some(Ok(_)) => Ok(()),
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

/// A score whose value or breakdown entry is not a finite number (NaN,
/// ±Inf) is the model's internal error on that job: JSON cannot carry it,
/// and an internal error is never memoized. Every call passes here (served
/// jobs, the warm-up, `riskhost model test`).
fn finite(score: Score, index: usize, job: &Job) -> Result<Score, ModelError> {
    let field = if !score.value.is_finite() {
        format!("`value` is {}", score.value)
    } else if let Some(c) = score.breakdown.iter().find(|c| !c.value.is_finite()) {
        format!(
            "breakdown entry `{}` is {}",
            truncate(&c.name, 64).escape_debug(),
            c.value
        )
    } else {
        return Ok(score);
    };
    let job = if job.portfolio.id.is_empty() {
        format!("job {index} of the call")
    } else {
        format!(
            "job {index} of the call (portfolio `{}`)",
            truncate(&job.portfolio.id, 128).escape_debug()
        )
    };
    Err(ModelError::Internal(format!(
        "{field}, not a finite number, in the score of {job}"
    )))
}

/// The settings shared by every engine of this build that compiles or runs
/// model code: what a [`Precompiler`] and a [`ModelEngine`] must agree on
/// for an artifact of one to load in the other.
fn code_config(meters_fuel: bool) -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        // Fuel costs every call a few percent, so it is only on when some
        // model has a budget.
        .consume_fuel(meters_fuel)
        .max_wasm_stack(512 << 10)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Why a component did not compile: invalid input (wasmtime validates
/// before compiling) or the compiler itself failing, e.g. out of memory.
fn compile_error(bytes: &[u8], error: &wasmtime::Error) -> LoadError {
    let message = format!("{error:#}");
    let invalid = error.chain().any(|cause| {
        cause
            .downcast_ref::<wasmparser::BinaryReaderError>()
            .is_some()
    });
    if !invalid && looks_out_of_memory(&message) {
        return LoadError::Compile(message);
    }
    if wasmparser_says_core_module(bytes) {
        LoadError::NotAComponent(format!(
            "this is a core wasm module; build for wasm32-wasip2 (or run `wasm-tools component new`) to get a component ({message})"
        ))
    } else {
        LoadError::NotAComponent(message)
    }
}

/// Whether an error's text is an allocation failure's (`ENOMEM`, a failed
/// `mmap`, Rust's allocation-failure message).
pub fn looks_out_of_memory(text: &str) -> bool {
    [
        "os error 12",
        "Cannot allocate memory",
        "memory allocation of",
        "out of memory",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// What a [`Precompiler`] must match of the engine that will load its
/// output: the one code setting that varies (fuel metering) and the
/// engine's compatibility key, which the precompiler checks against its own
/// so a mismatch is an error at once rather than an artifact that does not
/// load. Passed to a compile process as one argument ([`fmt::Display`] and
/// [`FromStr`](std::str::FromStr)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileSettings {
    pub meters_fuel: bool,
    pub key: String,
}

impl std::fmt::Display for CompileSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fuel={},key={}", u8::from(self.meters_fuel), self.key)
    }
}

impl std::str::FromStr for CompileSettings {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut meters_fuel = None;
        let mut key = None;
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("fuel", "0")) => meters_fuel = Some(false),
                Some(("fuel", "1")) => meters_fuel = Some(true),
                Some(("key", k)) if !k.is_empty() => key = Some(k.to_owned()),
                _ => return Err(format!("`{part}` is not a compile setting")),
            }
        }
        match (meters_fuel, key) {
            (Some(meters_fuel), Some(key)) => Ok(CompileSettings { meters_fuel, key }),
            _ => Err(format!("`{s}` is not `fuel=0|1,key=KEY`")),
        }
    }
}

/// Compiles components for a [`ModelEngine`] of the same
/// [`CompileSettings`], and nothing else: no instance pool (whose address
/// space reservation would dwarf a memory budget), no linker, no ticker.
/// What a compile process runs.
pub struct Precompiler {
    engine: Engine,
}

impl Precompiler {
    pub fn new(settings: &CompileSettings) -> Result<Self, EngineError> {
        let engine = Engine::new(&code_config(settings.meters_fuel))
            .map_err(|e| EngineError(format!("cannot create the compiling engine: {e}")))?;
        let precompiler = Precompiler { engine };
        let key = compatibility_key(&precompiler.engine);
        if key != settings.key {
            return Err(EngineError(format!(
                "the compiling engine's compatibility key is {key}, the serving engine's {}; \
                 the compile worker must be the same riskhost build",
                settings.key
            )));
        }
        Ok(precompiler)
    }

    /// The artifact of `bytes`, for [`ModelEngine::load_artifact`].
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        self.engine
            .precompile_component(bytes)
            .map_err(|e| compile_error(bytes, &e))
    }
}

/// Import name prefixes the sandbox's linker provides: WASI 0.2 and the
/// contract's own types (an interface of types only, imported by the world).
const SANDBOX_IMPORTS: &[&str] = &[
    "riskhost:model/",
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:filesystem/",
    "wasi:io/",
    "wasi:random/",
    "wasi:sockets/",
];

/// The message of a trap: what trapped, where in the model (the innermost
/// frames that are the model's own code, when the component kept its name
/// section), and what the model last said on stderr, which for a Rust panic
/// is the panic message.
fn trap_message(trap: &Trap, error: &wasmtime::Error, stderr: &str) -> String {
    let mut message = trap.to_string();
    if let Some(backtrace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames = model_frames(backtrace);
        if !frames.is_empty() {
            message.push_str(&format!(" in {}", frames.join(" <- ")));
        }
    }
    if let Some(words) = diagnostics::last_words(stderr) {
        message.push_str(&format!("; the model said: {}", truncate(&words, 512)));
    }
    message
}

/// Frames of runtime and allocator code, skipped so a trap names the model's
/// own function rather than `abort`.
const RUNTIME_FRAME_PREFIXES: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "__rust",
    "rust_panic",
    "rust_begin_unwind",
    "panic_abort",
    "abort",
    "dlmalloc",
    "wit_bindgen::",
    "<std::",
    "<core::",
    "<alloc::",
    "<wit_bindgen::",
];

/// Up to four innermost frames of the model's own code, by name, or by
/// function index when the component was stripped of names.
fn model_frames(backtrace: &wasmtime::WasmBacktrace) -> Vec<String> {
    let named: Vec<String> = backtrace
        .frames()
        .iter()
        .filter_map(|f| f.func_name())
        .map(demangle)
        .collect();
    if named.is_empty() {
        return backtrace
            .frames()
            .iter()
            .take(3)
            .map(|f| format!("wasm function {}", f.func_index()))
            .collect();
    }
    let own: Vec<String> = named
        .iter()
        .filter(|n| !RUNTIME_FRAME_PREFIXES.iter().any(|p| n.starts_with(p)))
        .take(4)
        .cloned()
        .collect();
    if own.is_empty() {
        named.into_iter().take(3).collect()
    } else {
        own
    }
}

/// A frame's name as a Rust programmer writes it: demangled (legacy or v0
/// mangling), without hash or crate disambiguators. Other names pass as is.
fn demangle(name: &str) -> String {
    format!("{:#}", rustc_demangle::demangle(name))
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

fn compatibility_key(engine: &Engine) -> String {
    use std::hash::Hash as _;
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

/// Feeds `Hash` input into SHA-256, which, unlike `DefaultHasher`, gives the
/// same key in every build, so artifact directories survive a rebuild.
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Only `write` is used (the key comes from `finalize`); this keeps
        // the trait whole.
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

/// One thread advancing the engine's epoch once per elapsed tick of the real
/// clock; deadlines are counted in ticks.
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
                // The epoch counts elapsed ticks of the real clock, not loop
                // iterations: on a loaded host a 1 ms sleep can take several,
                // and counting iterations would stretch every deadline.
                let started = Instant::now();
                let mut epoch: u128 = 0;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    let due = started.elapsed().as_nanos() / EPOCH_TICK.as_nanos();
                    while epoch < due {
                        engine.increment_epoch();
                        epoch += 1;
                    }
                }
            })?;
        Ok(EpochTicker { stop, handle })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_error_code_is_listed() {
        let errors = [
            CallError::Timeout(Duration::from_millis(1)),
            CallError::MemoryExhausted { limit_bytes: 1 },
            CallError::FuelExhausted { budget: 1 },
            CallError::StackOverflow,
            CallError::TooManyResources { limit: 1 },
            CallError::Trap(String::new()),
            CallError::OutputTooLarge(String::new()),
            CallError::ResultCount {
                expected: 1,
                got: 0,
            },
            CallError::Instantiate(String::new()),
        ];
        let answered: std::collections::BTreeSet<_> = errors.iter().map(CallError::code).collect();
        let listed: std::collections::BTreeSet<_> = CallError::CODES.into_iter().collect();
        assert_eq!(answered, listed);
    }

    #[test]
    fn last_words_of_a_rust_panic_are_its_location_and_message() {
        let stderr = "\nthread '<unnamed>' (1) panicked at src/lib.rs:41:5:\n\
                      the book does not balance\nacross two lines\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            diagnostics::last_words(stderr).as_deref(),
            Some("panicked at src/lib.rs:41:5: the book does not balance across two lines")
        );
    }

    #[test]
    fn last_words_otherwise_are_the_last_line_but_the_backtrace_hint() {
        let stderr = "loading\nmemory allocation of 1048576 bytes failed\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            diagnostics::last_words(stderr).as_deref(),
            Some("memory allocation of 1048576 bytes failed")
        );
        assert_eq!(diagnostics::last_words("\n \n"), None);
    }

    #[test]
    fn a_precompiled_component_loads_only_in_an_engine_of_its_settings() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/dist/var-parametric.wasm");
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run plugins/build.sh", path.display()));
        let engine = ModelEngine::new(SandboxLimits::default()).expect("engine");
        let settings = engine.compile_settings();
        assert_eq!(settings.to_string().parse(), Ok(settings.clone()));
        let artifact = Precompiler::new(&settings)
            .expect("precompiler")
            .precompile(&bytes)
            .expect("compiles");
        // SAFETY: made just above by this build's precompiler.
        let model =
            unsafe { engine.load_artifact(&artifact, ModelEngine::digest(&bytes), bytes.len()) }
                .expect("loads");
        assert_eq!(model.name(), "var-parametric");

        let fuel = CompileSettings {
            meters_fuel: true,
            ..settings.clone()
        };
        let error = Precompiler::new(&fuel).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("compatibility key")),
            "a precompiler that would meter fuel is refused: {error:?}"
        );
        assert!("fuel=2,key=x".parse::<CompileSettings>().is_err());
        assert!("fuel=1".parse::<CompileSettings>().is_err());
    }

    #[test]
    fn frame_names_are_demangled_without_hashes() {
        assert_eq!(
            demangle("_RNvNtCshXfaRvt2tfW_3std7process5abort"),
            "std::process::abort"
        );
        assert_eq!(
            demangle("_ZN13hostile_panic7explode17h0123456789abcdefE"),
            "hostile_panic::explode"
        );
        assert_eq!(demangle("cabi_realloc"), "cabi_realloc");
    }
}
