//! The binary's memory allocator, and what the compile worker must be told
//! about it.
//!
//! `main.rs` installs mimalloc as the global allocator: the server's
//! requests allocate many small, short-lived objects on every worker
//! thread, which glibc's malloc served with a quarter of an L1 hit's CPU
//! (BENCHMARKS.md, "Allocator").
//!
//! The compile worker is the same binary and bounds its memory with
//! `RLIMIT_DATA` from what it holds after start-up (`riskhost_models`'
//! `compile` module). mimalloc on Linux commits its first arena (1 GiB)
//! eagerly when the kernel overcommits, and that reservation would count as
//! start-up, so a component could compile in a gigabyte under a budget of
//! 128 MiB. With eager arena commit off, arenas are reserved without access
//! and committed as used, so the limit counts what compiling takes.

/// The compile worker's environment (it gets nothing else).
pub(crate) const COMPILE_WORKER_ENV: &[(&str, &str)] = &[("MIMALLOC_ARENA_EAGER_COMMIT", "0")];
