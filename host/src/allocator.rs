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

/// Returns the memory mimalloc holds freed on this thread (and in abandoned
/// thread heaps) to the OS. A model load frees tens of MiB at once on a
/// blocking thread (the component, the compiled artifact read from the
/// worker, the artifact written to the store), and mimalloc only purges
/// freed pages when the thread that holds them allocates again: a loading
/// thread goes idle first, so without this a Python model left about
/// 130 MiB of freed heap resident (BENCHMARKS.md, issue 20's full run of
/// 2026-12-08).
pub(crate) fn release_freed_memory() {
    // SAFETY: `mi_collect` walks only mimalloc's own structures, is safe on
    // any thread at any time, and frees nothing in use.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
