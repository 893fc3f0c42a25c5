//! The limits model calls run under, and per-model overrides of them.
//!
//! [`SandboxLimits`] holds the process-wide defaults plus an override per
//! model name (`--model-limits`). A model's effective limits,
//! [`ModelLimits`], are resolved once when it loads (its name comes from its
//! `info()`), so a call never looks anything up.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::shape::ShapeLimits;

/// Largest linear memory a wasm32 instance can address.
pub const MAX_MEMORY_MIB: usize = 4096;

/// Limits every model call runs under, unless its model has an override.
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
    /// Host bytes a call's results may occupy while they are copied out of the
    /// instance, per job; a call gets one job's worth more for itself. Checked
    /// during the copy, so an oversized answer is refused before the host
    /// allocates it.
    pub max_output_bytes_per_job: usize,
    /// Bytes of stdout and of stderr kept per call for the host's log.
    pub captured_output_bytes: usize,
    /// Fuel metering (deterministic instruction budgets); off when `None`.
    pub fuel: Option<FuelBudget>,
    /// Overrides by model name.
    pub overrides: BTreeMap<String, LimitOverrides>,
    /// What one function may be before it is compiled (`shape.rs`).
    pub shape: ShapeLimits,
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
            max_output_bytes_per_job: 2 << 20,
            captured_output_bytes: 8 * 1024,
            fuel: None,
            overrides: BTreeMap::new(),
            shape: ShapeLimits::default(),
        }
    }
}

impl SandboxLimits {
    /// The default deadline of a batch call of `jobs` jobs (the tests'
    /// reference for a model without an override).
    #[cfg(test)]
    pub(crate) fn deadline_for(&self, jobs: usize) -> Duration {
        deadline(
            self.deadline_base,
            self.deadline_per_job,
            self.deadline_cap,
            jobs,
        )
    }

    /// The limits of the model called `name`: the defaults with its override.
    pub fn for_model(&self, name: &str) -> ModelLimits {
        let o = self.overrides.get(name).cloned().unwrap_or_default();
        let deadline_base = o.deadline_base.unwrap_or(self.deadline_base);
        let per_job = o.fuel_per_job.or(self.fuel.map(|f| f.per_job));
        let base = o.fuel_base.or(self.fuel.map(|f| f.base)).or(per_job);
        ModelLimits {
            memory_bytes: o.memory_bytes.unwrap_or(self.memory_bytes),
            deadline_base,
            deadline_per_job: o.deadline_per_job.unwrap_or(self.deadline_per_job),
            // A model given a longer base deadline than the default cap gets it.
            deadline_cap: o
                .deadline_cap
                .unwrap_or(self.deadline_cap.max(deadline_base)),
            fuel: base.map(|base| FuelBudget {
                base,
                per_job: per_job.unwrap_or(0),
            }),
            max_output_bytes_per_job: self.max_output_bytes_per_job,
            max_concurrent: o.max_concurrent,
            max_queued: o.max_queued,
        }
    }

    /// The limits of load-time calls (`info()`), made before the model's
    /// name is known: the defaults, with room for the largest memory cap so
    /// a model given more memory can be loaded at all.
    pub(crate) fn for_loading(&self) -> ModelLimits {
        ModelLimits {
            memory_bytes: self.largest_memory_bytes(),
            ..self.for_model("")
        }
    }

    /// The largest memory cap of any model; what the instance pool reserves.
    pub(crate) fn largest_memory_bytes(&self) -> usize {
        self.overrides
            .values()
            .filter_map(|o| o.memory_bytes)
            .fold(self.memory_bytes, usize::max)
    }

    /// Whether any model runs with a fuel budget, which makes every call pay
    /// for fuel accounting.
    pub(crate) fn meters_fuel(&self) -> bool {
        self.fuel.is_some()
            || self
                .overrides
                .values()
                .any(|o| o.fuel_base.is_some() || o.fuel_per_job.is_some())
    }

    /// Adds overrides, a later value of a setting replacing an earlier one.
    pub fn add_overrides(&mut self, args: impl IntoIterator<Item = ModelLimitsArg>) {
        for arg in args {
            self.overrides
                .entry(arg.model)
                .or_default()
                .merge(arg.overrides);
        }
    }
}

fn deadline(base: Duration, per_job: Duration, cap: Duration, jobs: usize) -> Duration {
    let scaled = base + per_job.saturating_mul(u32::try_from(jobs).unwrap_or(u32::MAX));
    scaled.min(cap)
}

/// A fuel budget: `base + per_job × jobs` units per call. A unit is roughly
/// one wasm instruction, so a budget is a CPU bound that, unlike a deadline,
/// does not depend on how busy the machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuelBudget {
    pub base: u64,
    pub per_job: u64,
}

impl FuelBudget {
    pub(crate) fn for_jobs(&self, jobs: usize) -> u64 {
        self.base
            .saturating_add(self.per_job.saturating_mul(jobs as u64))
    }
}

/// The effective limits of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLimits {
    pub memory_bytes: usize,
    pub deadline_base: Duration,
    pub deadline_per_job: Duration,
    pub deadline_cap: Duration,
    pub fuel: Option<FuelBudget>,
    pub max_output_bytes_per_job: usize,
    /// Bulkhead overrides; `None` keeps the server's setting.
    pub max_concurrent: Option<usize>,
    pub max_queued: Option<usize>,
}

impl ModelLimits {
    pub(crate) fn deadline_for(&self, jobs: usize) -> Duration {
        deadline(
            self.deadline_base,
            self.deadline_per_job,
            self.deadline_cap,
            jobs,
        )
    }

    pub(crate) fn fuel_for(&self, jobs: usize) -> Option<u64> {
        self.fuel.map(|f| f.for_jobs(jobs))
    }

    /// Host bytes the results of a call of `jobs` jobs may take: the
    /// per-job allowance, but never more than the model's memory cap, so a
    /// guest can make the host allocate no more for its answer than it may
    /// allocate itself (2 MiB × 257 would be 514 MiB under a 64 MiB cap).
    pub(crate) fn output_budget(&self, jobs: usize) -> usize {
        self.max_output_bytes_per_job
            .saturating_mul(jobs.saturating_add(1))
            .min(self.memory_bytes)
    }
}

/// What `--model-limits` may change for one model; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub memory_bytes: Option<usize>,
    pub deadline_base: Option<Duration>,
    pub deadline_per_job: Option<Duration>,
    pub deadline_cap: Option<Duration>,
    pub fuel_base: Option<u64>,
    pub fuel_per_job: Option<u64>,
    pub max_concurrent: Option<usize>,
    pub max_queued: Option<usize>,
}

impl LimitOverrides {
    fn merge(&mut self, later: LimitOverrides) {
        macro_rules! take {
            ($($field:ident),*) => { $( if later.$field.is_some() { self.$field = later.$field; } )* };
        }
        take!(
            memory_bytes,
            deadline_base,
            deadline_per_job,
            deadline_cap,
            fuel_base,
            fuel_per_job,
            max_concurrent,
            max_queued
        );
    }
}

/// One `--model-limits` value: `MODEL:KEY=VALUE[,KEY=VALUE…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLimitsArg {
    pub model: String,
    pub overrides: LimitOverrides,
}

/// The keys `--model-limits` accepts, in the order the help lists them.
pub(crate) const LIMIT_KEYS: &[&str] = &[
    "memory_mib",
    "deadline_ms",
    "deadline_per_job_us",
    "deadline_cap_ms",
    "fuel_base",
    "fuel_per_job",
    "max_concurrent",
    "max_queued",
];

/// Why a `--model-limits` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsParseError(String);

impl fmt::Display for LimitsParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitsParseError {}

impl FromStr for ModelLimitsArg {
    type Err = LimitsParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why: String| LimitsParseError(format!("invalid model limits `{s}`: {why}"));
        let Some((model, settings)) = s.trim().split_once(':') else {
            return Err(fail(
                "expected MODEL:KEY=VALUE[,KEY=VALUE…], e.g. slow-legal:deadline_ms=5000".into(),
            ));
        };
        let model = model.trim();
        if !crate::ModelName::is_valid(model) {
            return Err(fail(format!(
                "`{model}` is not a model name (lower-kebab-case, as in info())"
            )));
        }
        let mut overrides = LimitOverrides::default();
        let mut any = false;
        for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((key, value)) = setting.split_once('=') else {
                return Err(fail(format!("`{setting}` is not KEY=VALUE")));
            };
            let (key, value) = (key.trim(), value.trim());
            let number = |min: u64, max: u64| -> Result<u64, LimitsParseError> {
                let n: u64 = value
                    .parse()
                    .map_err(|_| fail(format!("`{key}` needs a whole number, got `{value}`")))?;
                if !(min..=max).contains(&n) {
                    return Err(fail(format!(
                        "`{key}` must be between {min} and {max}, got {n}"
                    )));
                }
                Ok(n)
            };
            let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            match key {
                "memory_mib" => {
                    overrides.memory_bytes = Some(size(number(1, MAX_MEMORY_MIB as u64)?) << 20);
                }
                "deadline_ms" => {
                    overrides.deadline_base = Some(Duration::from_millis(number(1, 3_600_000)?));
                }
                "deadline_per_job_us" => {
                    overrides.deadline_per_job =
                        Some(Duration::from_micros(number(0, 60_000_000)?));
                }
                "deadline_cap_ms" => {
                    overrides.deadline_cap = Some(Duration::from_millis(number(1, 3_600_000)?));
                }
                "fuel_base" => overrides.fuel_base = Some(number(1, u64::MAX)?),
                "fuel_per_job" => overrides.fuel_per_job = Some(number(0, u64::MAX)?),
                "max_concurrent" => overrides.max_concurrent = Some(size(number(1, 65_536)?)),
                "max_queued" => overrides.max_queued = Some(size(number(0, 1 << 24)?)),
                _ => {
                    return Err(fail(format!(
                        "unknown limit `{key}`; known: {}",
                        LIMIT_KEYS.join(", ")
                    )));
                }
            }
            any = true;
        }
        if !any {
            return Err(fail(format!(
                "no limits given for `{model}`; known: {}",
                LIMIT_KEYS.join(", ")
            )));
        }
        Ok(ModelLimitsArg {
            model: model.to_owned(),
            overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelLimitsArg, String> {
        s.parse::<ModelLimitsArg>().map_err(|e| e.to_string())
    }

    #[test]
    fn model_limits_parse_every_key() {
        let arg = parse(
            "slow-legal: deadline_ms=5000, memory_mib=128,deadline_per_job_us=10,\
             deadline_cap_ms=9000,fuel_base=7,fuel_per_job=8,max_concurrent=2,max_queued=0",
        )
        .unwrap();
        assert_eq!(arg.model, "slow-legal");
        assert_eq!(
            arg.overrides,
            LimitOverrides {
                memory_bytes: Some(128 << 20),
                deadline_base: Some(Duration::from_millis(5000)),
                deadline_per_job: Some(Duration::from_micros(10)),
                deadline_cap: Some(Duration::from_millis(9000)),
                fuel_base: Some(7),
                fuel_per_job: Some(8),
                max_concurrent: Some(2),
                max_queued: Some(0),
            }
        );
    }

    #[test]
    fn bad_model_limits_say_what_is_wrong() {
        let cases = [
            ("slow-legal", "MODEL:KEY=VALUE"),
            ("Slow:deadline_ms=1", "not a model name"),
            // The one model-name rule (`ModelName`), not a looser copy.
            ("-var:deadline_ms=1", "not a model name"),
            ("a--b:deadline_ms=1", "not a model name"),
            ("m:deadline=1", "unknown limit `deadline`"),
            ("m:memory_mib=lots", "needs a whole number"),
            ("m:memory_mib=0", "between 1 and 4096"),
            ("m:memory_mib=5000", "between 1 and 4096"),
            ("m:deadline_ms", "not KEY=VALUE"),
            ("m:", "no limits given"),
        ];
        for (input, needle) in cases {
            let error = parse(input).unwrap_err();
            assert!(error.contains(needle), "{input}: {error}");
            assert!(error.contains(input.trim()), "{input}: {error}");
        }
    }

    #[test]
    fn overrides_apply_per_model_and_later_values_win() {
        let mut limits = SandboxLimits::default();
        limits.add_overrides([
            parse("slow:deadline_ms=5000,memory_mib=16").unwrap(),
            parse("slow:memory_mib=128").unwrap(),
            parse("fueled:fuel_per_job=100").unwrap(),
        ]);
        let slow = limits.for_model("slow");
        assert_eq!(slow.memory_bytes, 128 << 20);
        assert_eq!(slow.deadline_for(1), Duration::from_millis(5002));
        // The default cap (30 s) still bounds big batches.
        assert_eq!(slow.deadline_for(1_000_000), Duration::from_secs(30));
        assert_eq!(slow.fuel, None);
        let other = limits.for_model("other");
        assert_eq!(other.memory_bytes, 64 << 20);
        assert_eq!(other.deadline_for(1), limits.deadline_for(1));
        assert_eq!(limits.largest_memory_bytes(), 128 << 20);
        assert_eq!(limits.for_loading().memory_bytes, 128 << 20);
        assert_eq!(limits.for_loading().deadline_base, limits.deadline_base);
        // Fuel for one model turns metering on; its base defaults to per_job.
        assert!(limits.meters_fuel());
        assert_eq!(limits.for_model("fueled").fuel_for(3), Some(400));
        assert_eq!(limits.for_model("other").fuel_for(3), None);
    }

    #[test]
    fn a_long_base_deadline_raises_the_cap_unless_one_is_given() {
        let mut limits = SandboxLimits::default();
        limits.add_overrides([
            parse("a:deadline_ms=60000").unwrap(),
            parse("b:deadline_ms=60000,deadline_cap_ms=40000").unwrap(),
        ]);
        assert_eq!(
            limits.for_model("a").deadline_for(1),
            Duration::from_millis(60_000)
        );
        assert_eq!(
            limits.for_model("b").deadline_for(1),
            Duration::from_millis(40_000)
        );
    }

    #[test]
    fn global_fuel_applies_to_every_model_with_per_model_overrides() {
        let mut limits = SandboxLimits {
            fuel: Some(FuelBudget {
                base: 1_000,
                per_job: 10,
            }),
            ..SandboxLimits::default()
        };
        limits.add_overrides([parse("big:fuel_per_job=100").unwrap()]);
        assert_eq!(limits.for_model("x").fuel_for(2), Some(1_020));
        assert_eq!(limits.for_model("big").fuel_for(2), Some(1_200));
        assert_eq!(limits.for_model("x").output_budget(1), 4 << 20);
    }

    #[test]
    fn host_memory_a_call_can_cause_is_bounded_by_the_memory_cap() {
        let mut limits = SandboxLimits::default();
        limits.add_overrides([parse("small:memory_mib=16").unwrap()]);
        let default = limits.for_model("x");
        // A full 256-job chunk: 2 MiB x 257 would be 514 MiB.
        assert_eq!(default.output_budget(256), 64 << 20);
        assert_eq!(limits.for_model("small").output_budget(256), 16 << 20);
        // The WASI resource table: 16,384 entries of at most 256 bytes under
        // 64 MiB, i.e. 4 MiB of host memory, a sixteenth of the cap.
        let entries = crate::sandbox::resource_table_capacity(default.memory_bytes);
        assert_eq!(entries, 16_384);
        assert_eq!(
            entries * crate::sandbox::RESOURCE_ENTRY_HOST_BYTES,
            default.memory_bytes / 16
        );
        assert_eq!(crate::sandbox::resource_table_capacity(1 << 20), 1024);
    }
}
