//! riskhost's integration tests, one binary: each module drives the real
//! `riskhost` binary (or, in `in_process`, the server in this process) over
//! HTTP against the real services. One binary links the harness once;
//! nextest still runs every test in a process of its own.

mod common;

mod analytics;
mod api;
mod api_tools;
mod auth;
mod backtest;
mod batch;
mod cache;
mod challenger;
mod compile;
mod crate_graph;
mod data_sources;
mod events;
mod fleet;
mod fleet_limits;
mod hotswap;
mod in_process;
mod metrics;
mod oci;
mod openapi;
mod properties;
mod python;
mod quant;
mod replay;
mod run_cli;
mod runs;
mod sandbox;
mod shutdown;
mod signing;
