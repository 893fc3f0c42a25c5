//! `versioned` 3.0.0, the failing build: every job fails with an internal error. The
//! challenger tests set it as the challenger of build A. See
//! `../versioned-a/src/model.rs`.

/// Unused: this build never scores.
pub const SCALE: f64 = 1.0;

const MISBEHAVIOUR: Misbehaviour = Misbehaviour::Fail;

include!("../../versioned-a/src/model.rs");
