//! riskhost, the binary's library: the command line, the configuration and
//! the composition root that builds every service from it.
//!
//! - `config.rs`, `settings_file.rs`, `sources.rs`: every setting (clap
//!   stays here; the capability crates take plain `*Settings` structs).
//! - `services.rs`: builds the services each command needs, once.
//! - `server.rs`: `serve`, with `server::run` handed its listener and its
//!   shutdown future.
//! - `cli.rs`, `score_file.rs`, `db.rs`, `key_command.rs`, `tooling/`: the
//!   other subcommands; `run_command.rs`: `riskhost run …`, the client of a
//!   server's risk runs; `replay_command.rs`: `riskhost replay`, the client
//!   of a server's `POST /v1/replay`.
//! - `telemetry.rs`: the log subscriber and the Prometheus recorder.
//!
//! Its API is what `main.rs` needs, re-exported below: the command line
//! ([`Cli`]), the configuration file ([`apply_config_file`],
//! [`print_effective`]), [`run`] and the [`exit_code`] of its error; and [`serve_in_process`], the server
//! run in the caller's process (`tests/it/in_process.rs`).
//!
//! May not: hold domain logic. What scores, caches, stores or answers HTTP
//! lives in the crates under `crates/` (ARCHITECTURE.md).

mod allocator;
mod cli;
mod config;
mod db;
mod key_command;
mod replay_command;
mod run_command;
mod score_file;
mod server;
mod services;
mod settings_file;
mod sources;
mod telemetry;
mod tooling;

pub use self::cli::run;
pub use self::config::Cli;
pub use self::run_command::exit_code;
pub use self::server::serve_in_process;
pub use self::settings_file::{ConfigFile, apply_config_file, apply_secret_files, print_effective};
