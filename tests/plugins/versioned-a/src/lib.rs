//! `versioned` 1.0.0, build A: outputs scaled by 1. See `model.rs`.

/// The factor that tells this build's outputs apart.
pub const SCALE: f64 = 1.0;

const MISBEHAVIOUR: Misbehaviour = Misbehaviour::Score;

include!("model.rs");
