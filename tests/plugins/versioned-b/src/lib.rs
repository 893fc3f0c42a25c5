//! `versioned` 2.0.0, build B: outputs scaled by 2. See
//! `../versioned-a/src/model.rs`.

/// The factor that tells this build's outputs apart.
pub const SCALE: f64 = 2.0;

const MISBEHAVIOUR: Misbehaviour = Misbehaviour::Score;

include!("../../versioned-a/src/model.rs");
