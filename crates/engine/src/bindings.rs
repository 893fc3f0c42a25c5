//! Host-side bindings generated from `wit/model.wit`.
//!
//! Kept in their own module so the generated names (`Model`, `ModelPre`,
//! the record types) never collide with the host's domain types; the
//! engine's one public module, because the other crates name the
//! contract's types by this path (`bindings::Job`, `bindings::Score`, …).

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "model",
    additional_derives: [PartialEq],
});

// The world's `use` already brings Job, MarketData, ModelError, ModelInfo
// and Score into this module.
pub use riskhost::model::types::{
    Contribution, DataNeeds, ParamSpec, Portfolio, Position, PriceSeries, Unit,
};
