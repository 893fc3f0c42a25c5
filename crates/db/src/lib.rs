//! riskhost-db: the database connections every other crate shares.
//!
//! - `postgres.rs`: [`PgPool`], the pooled PostgreSQL client
//!   (deadpool-postgres) with metrics, time bounds and error translation,
//!   and [`migrate`], the migrations that create riskhost's tables.
//! - `listen.rs`: [`listen`], PostgreSQL `LISTEN` on a dedicated
//!   connection that reconnects by itself and says so ([`Notice::Resync`]).
//! - `clickhouse.rs`: [`Warehouse`], the pooled ClickHouse HTTP client
//!   shared by the ClickHouse market source and the score-event sink.
//!
//! The crate's API is what this file re-exports.
//!
//! May not: know what the tables mean (market data, keys and events are
//! their own crates' business), or depend on any riskhost crate.

mod clickhouse;
mod listen;
mod postgres;

pub use self::clickhouse::{
    ServerVersion, Warehouse, WarehouseSettings, validate_name as validate_clickhouse_name,
};
pub use self::listen::{Notice, channel_name, listen};
pub use self::postgres::{PgPool, PgSettings, migrate};

/// Why a database could not be used.
///
/// Messages may reach API clients (as 503s), so they name the server and the
/// operation but never credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The configuration is unusable (bad URL, schema or table name).
    #[error("{0}")]
    Invalid(String),
    /// The database is down, slow or refused the statement.
    #[error("{0}")]
    Unavailable(String),
}
