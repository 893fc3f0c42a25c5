//! riskhost, the binary's library: the command line, the configuration and
//! the composition root that builds every service from it.
//!
//! - [`config`], [`settings_file`], [`sources`]: every setting (clap stays
//!   here; the capability crates take plain `*Settings` structs).
//! - [`services`]: builds the services each command needs, once.
//! - [`server`]: `serve`, with [`server::run`] handed its listener and its
//!   shutdown future.
//! - [`cli`], [`score_file`], [`db`], [`key_command`], [`tooling`]: the
//!   other subcommands.
//! - [`telemetry`]: the log subscriber and the Prometheus recorder.
//!
//! May not: hold domain logic. What scores, caches, stores or answers HTTP
//! lives in the crates under `crates/` (ARCHITECTURE.md).

pub mod cli;
pub mod config;
pub mod db;
pub mod key_command;
pub mod score_file;
pub mod server;
pub mod services;
pub mod settings_file;
pub mod sources;
pub mod telemetry;
pub mod tooling;
