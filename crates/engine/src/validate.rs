//! Load-time checks of a model's `info()` and the host's view of it.
//!
//! `info()` is the model's promise about its parameters and data needs; the
//! host resolves every request against it (defaults, bounds, whole numbers)
//! so models receive only valid parameter vectors. A model whose `info()` is
//! inconsistent never loads.

use std::collections::BTreeMap;

use serde::Serialize;

use super::bindings::{Job, MarketData, ModelInfo, Portfolio, Position, PriceSeries, Unit};
use crate::ModelName;

/// Longest lookback any model may ask for (20 years of trading days).
pub(crate) const MAX_LOOKBACK_DAYS: u32 = 5040;

/// What the host knows about a loaded model, as served by `GET /v1/models`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ModelDescription {
    pub name: String,
    pub version: String,
    pub description: String,
    pub params: Vec<ParamDescription>,
    pub data: DataDescription,
}

/// A parameter a model declares.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ParamDescription {
    pub name: String,
    pub description: String,
    pub default: f64,
    pub min: f64,
    pub max: f64,
    pub integer: bool,
}

/// The market data a model needs.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DataDescription {
    /// Always `daily_closes` in contract 1.0.
    #[cfg_attr(feature = "schema", schema(value_type = String))]
    pub kind: &'static str,
    pub lookback_days: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookback_param: Option<String>,
}

/// Why a request's parameters do not fit a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown parameter `{name}`; {model} accepts: {accepted}")]
    Unknown {
        name: String,
        model: String,
        accepted: String,
    },
    #[error("parameter `{name}` must be a finite number, got {value}")]
    NotFinite { name: String, value: f64 },
    #[error("parameter `{name}` = {value} is out of bounds [{min}, {max}]")]
    OutOfBounds {
        name: String,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("parameter `{name}` must be a whole number, got {value}")]
    NotInteger { name: String, value: f64 },
}

/// The client-facing name of a unit.
pub fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::CurrencyAmount => "currency_amount",
        Unit::Probability => "probability",
        Unit::Ratio => "ratio",
        Unit::Index => "index",
        Unit::BasisPoints => "basis_points",
    }
}

impl ModelDescription {
    /// Resolves a request's parameters against the model's specs: applies
    /// defaults and checks names, finiteness, bounds and whole numbers.
    /// Returns the values in the order the model expects them.
    pub fn resolve_params(&self, given: &BTreeMap<String, f64>) -> Result<Vec<f64>, ParamError> {
        if let Some(name) = given
            .keys()
            .find(|name| !self.params.iter().any(|p| &p.name == *name))
        {
            return Err(ParamError::Unknown {
                name: name.clone(),
                model: self.name.clone(),
                accepted: self
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.params
            .iter()
            .map(|spec| {
                let value = given.get(&spec.name).copied().unwrap_or(spec.default);
                let name = || spec.name.clone();
                if !value.is_finite() {
                    return Err(ParamError::NotFinite {
                        name: name(),
                        value,
                    });
                }
                if value < spec.min || value > spec.max {
                    return Err(ParamError::OutOfBounds {
                        name: name(),
                        value,
                        min: spec.min,
                        max: spec.max,
                    });
                }
                if spec.integer && value.fract() != 0.0 {
                    return Err(ParamError::NotInteger {
                        name: name(),
                        value,
                    });
                }
                // -0.0 and 0.0 are the same parameter; one encoding keeps cache keys canonical.
                Ok(if value == 0.0 { 0.0 } else { value })
            })
            .collect()
    }

    /// Daily returns of history a job with these (resolved) params needs.
    pub fn lookback_for(&self, params: &[f64]) -> usize {
        let from_param = self.data.lookback_param.as_ref().and_then(|name| {
            let index = self.params.iter().position(|p| &p.name == name)?;
            params.get(index).copied()
        });
        match from_param {
            // Bounded by validation: integer, >= 1, <= MAX_LOOKBACK_DAYS.
            Some(days) => days as usize,
            None => self.data.lookback_days as usize,
        }
    }

    /// The default parameter vector.
    pub(crate) fn default_params(&self) -> Vec<f64> {
        self.params.iter().map(|p| p.default).collect()
    }
}

fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    s.len() <= 64
        && parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
}

/// Checks `info()` and turns it into the host's description.
pub(crate) fn describe(info: ModelInfo) -> Result<ModelDescription, String> {
    if !ModelName::is_valid(&info.name) {
        return Err(format!(
            "name `{}` must be lower-kebab-case ASCII (a-z, 0-9, '-'), starting with a letter, at most 64 bytes",
            info.name.escape_debug()
        ));
    }
    if !is_semver(&info.version) {
        return Err(format!(
            "version `{}` is not a semantic version like 1.2.3",
            info.version.escape_debug()
        ));
    }
    if info.description.len() > 16 * 1024 {
        return Err("description is longer than 16 KiB".into());
    }
    if info.params.len() > 64 {
        return Err(format!(
            "{} parameters; at most 64 are allowed",
            info.params.len()
        ));
    }
    let mut params = Vec::with_capacity(info.params.len());
    for p in info.params {
        if !ModelName::is_valid(&p.name.replace('_', "-")) {
            return Err(format!(
                "parameter name `{}` must be ASCII lower-case words joined by '_' or '-'",
                p.name.escape_debug()
            ));
        }
        if params.iter().any(|q: &ParamDescription| q.name == p.name) {
            return Err(format!("parameter `{}` is declared twice", p.name));
        }
        if !(p.min.is_finite() && p.max.is_finite() && p.default_value.is_finite()) || p.min > p.max
        {
            return Err(format!(
                "parameter `{}` needs finite bounds with min <= max",
                p.name
            ));
        }
        if !(p.min..=p.max).contains(&p.default_value) {
            return Err(format!(
                "parameter `{}` has default {} outside its bounds [{}, {}]",
                p.name, p.default_value, p.min, p.max
            ));
        }
        if p.integer
            && (p.default_value.fract() != 0.0 || p.min.fract() != 0.0 || p.max.fract() != 0.0)
        {
            return Err(format!(
                "integer parameter `{}` needs whole default and bounds",
                p.name
            ));
        }
        params.push(ParamDescription {
            name: p.name,
            description: p.description,
            default: p.default_value,
            min: p.min,
            max: p.max,
            integer: p.integer,
        });
    }
    let needs = info.data;
    if needs.lookback_days > MAX_LOOKBACK_DAYS {
        return Err(format!(
            "lookback of {} days exceeds the host's maximum of {MAX_LOOKBACK_DAYS}",
            needs.lookback_days
        ));
    }
    if let Some(name) = &needs.lookback_param {
        let Some(spec) = params.iter().find(|p| &p.name == name) else {
            return Err(format!(
                "data needs name lookback parameter `{name}`, which is not declared"
            ));
        };
        if !spec.integer || spec.min < 1.0 || spec.max > f64::from(MAX_LOOKBACK_DAYS) {
            return Err(format!(
                "lookback parameter `{name}` must be an integer within [1, {MAX_LOOKBACK_DAYS}]"
            ));
        }
    }
    Ok(ModelDescription {
        name: info.name,
        version: info.version,
        description: info.description,
        params,
        data: DataDescription {
            kind: "daily_closes",
            lookback_days: needs.lookback_days,
            lookback_param: needs.lookback_param,
        },
    })
}

/// A canned batch for the warm-up call: two synthetic instruments with enough
/// history for the default parameters, one long and one short position.
pub(crate) fn warm_up_batch(description: &ModelDescription) -> (MarketData, Vec<Job>) {
    let params = description.default_params();
    let lookback = description.lookback_for(&params).max(1);
    let closes = |seed: u64| {
        let mut state = seed;
        let mut level = 100.0;
        (0..=lookback)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                level *= 1.0 + (u - 0.5) * 0.04;
                level
            })
            .collect::<Vec<f64>>()
    };
    let first_day = 10_000;
    let market = MarketData {
        as_of: "1997-05-19".into(),
        dates: (0..=lookback as i32).map(|d| first_day + d).collect(),
        series: vec![
            PriceSeries {
                instrument: "WARMUP-A".into(),
                closes: closes(1),
            },
            PriceSeries {
                instrument: "WARMUP-B".into(),
                closes: closes(2),
            },
        ],
    };
    let jobs = vec![Job {
        portfolio: Portfolio {
            id: "warm-up".into(),
            positions: vec![
                Position {
                    series: 0,
                    quantity: 100.0,
                },
                Position {
                    series: 1,
                    quantity: -50.0,
                },
            ],
        },
        params,
        seed: 0,
    }];
    (market, jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> ModelDescription {
        ModelDescription {
            name: "m".into(),
            version: "1.0.0".into(),
            description: String::new(),
            params: vec![
                ParamDescription {
                    name: "confidence".into(),
                    description: String::new(),
                    default: 0.99,
                    min: 0.5,
                    max: 0.9999,
                    integer: false,
                },
                ParamDescription {
                    name: "lookback_days".into(),
                    description: String::new(),
                    default: 250.0,
                    min: 2.0,
                    max: 5000.0,
                    integer: true,
                },
            ],
            data: DataDescription {
                kind: "daily_closes",
                lookback_days: 250,
                lookback_param: Some("lookback_days".into()),
            },
        }
    }

    #[test]
    fn params_get_defaults_bounds_and_whole_number_checks() {
        let d = description();
        assert_eq!(d.resolve_params(&BTreeMap::new()), Ok(vec![0.99, 250.0]));
        let given = BTreeMap::from([("lookback_days".to_owned(), 100.0)]);
        assert_eq!(d.resolve_params(&given), Ok(vec![0.99, 100.0]));
        assert_eq!(d.lookback_for(&[0.99, 100.0]), 100);
        let bad = |k: &str, v: f64| {
            d.resolve_params(&BTreeMap::from([(k.to_owned(), v)]))
                .unwrap_err()
        };
        assert!(matches!(
            bad("confidence", 1.5),
            ParamError::OutOfBounds { .. }
        ));
        assert!(matches!(
            bad("confidence", f64::NAN),
            ParamError::NotFinite { .. }
        ));
        assert!(matches!(
            bad("lookback_days", 10.5),
            ParamError::NotInteger { .. }
        ));
        assert!(matches!(bad("alpha", 1.0), ParamError::Unknown { .. }));
    }

    #[test]
    fn names_and_versions_are_checked() {
        assert!(ModelName::is_valid("var-historical"));
        assert!(!ModelName::is_valid("Var"));
        assert!(!ModelName::is_valid("var--x"));
        assert!(!ModelName::is_valid("-var"));
        assert!(is_semver("1.2.3"));
        assert!(is_semver("1.2.3-rc.1+build.5"));
        assert!(!is_semver("1.2"));
        assert!(!is_semver("01.2.3"));
        assert!(!is_semver("v1.2.3"));
    }

    #[test]
    fn warm_up_batch_has_enough_history_for_the_defaults() {
        let (market, jobs) = warm_up_batch(&description());
        assert_eq!(market.dates.len(), 251);
        assert!(
            market
                .series
                .iter()
                .all(|s| s.closes.len() == 251 && s.closes.iter().all(|c| *c > 0.0))
        );
        assert_eq!(jobs[0].params, vec![0.99, 250.0]);
    }
}
