//! riskhost: serves risk models shipped as sandboxed WebAssembly components.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod deploy;
pub mod engine;
pub mod events;
pub mod limits;
pub mod loader;
pub mod market;
pub mod openapi;
pub mod registry;
pub mod score_file;
pub mod scoring;
pub mod server;
pub mod settings_file;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tooling;
pub mod warehouse;
pub mod watcher;
