//! `versioned` 4.0.0, the hanging build: every call runs until its deadline stops it. The
//! challenger tests set it as the challenger of build A. See
//! `../versioned-a/src/model.rs`.

/// Unused: this build never scores.
pub const SCALE: f64 = 1.0;

const MISBEHAVIOUR: Misbehaviour = Misbehaviour::Hang;

include!("../../versioned-a/src/model.rs");
