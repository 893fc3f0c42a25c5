//! riskhost-fleet: the shared model registry in PostgreSQL
//! (`--model-store postgres`) that every replica of a fleet follows.
//!
//! - `registry.rs`: the registry's tables and statements: versions by
//!   digest, each model's pointer with its revision, the append-only audit
//!   log, the replicas' heartbeats; every change is one transaction that
//!   locks the pointer, moves the revision, audits and notifies.
//! - `replica.rs`: [`SharedRegistry`], one replica: the [`ModelCatalog`]
//!   backend the admin routes use, the reconcile that makes the local
//!   store and the served versions follow the registry (LISTEN/NOTIFY plus
//!   a poll), the heartbeat, and the fleet view.
//!
//! The crate's API is what this file re-exports.
//!
//! May not: make a version live other than through
//! `riskhost_models::ModelManager`; know about HTTP, caches or market data.
//!
//! [`ModelCatalog`]: riskhost_models::ModelCatalog

mod registry;
mod replica;

pub use self::replica::{FleetSettings, FleetTasks, SharedRegistry};
