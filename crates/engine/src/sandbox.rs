//! The per-call sandbox: what a model instance may see of the world.
//!
//! Every call gets a fresh `Store` whose WASI context grants nothing real: no
//! preopened directories, no environment, no arguments, no stdin, no sockets.
//! Clocks are frozen at the request's `as_of` instant and randomness is a
//! stream seeded from the request's content, so a model built by a toolchain
//! that imports all of WASI still loads, and its scores stay reproducible and
//! memoizable. Output is captured into bounded buffers and logged by the host.
//!
//! Epoch interruption only stops a guest while its own code runs, so every
//! WASI call that can wait is bounded here by the call's deadline as well:
//! `wasi:io/poll` is linked in a version whose waits end at the deadline with
//! the same trap an epoch interrupt raises. docs/sandbox.md lists, import by
//! import, why nothing else the sandbox links can wait.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::Trap;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamError};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

/// Store data of one model call.
pub(crate) struct SandboxState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    /// When the call's deadline passes in real time: where every wait
    /// inside a WASI call ends.
    deadline: Instant,
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Inputs that make a call's environment deterministic.
#[derive(Debug, Clone, Copy)]
pub struct Determinism {
    /// The instant clocks report: midnight UTC of the request's as-of date.
    pub as_of_unix_seconds: i64,
    /// Seed of every random stream the guest can read.
    pub seed: u64,
}

impl SandboxState {
    pub(crate) fn new(
        determinism: Determinism,
        memory_limit_bytes: usize,
        deadline: Instant,
        output: &CapturedOutput,
    ) -> Self {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(output.stdout.clone())
            .stderr(output.stderr.clone())
            .wall_clock(FrozenWallClock(determinism.as_of_unix_seconds))
            .monotonic_clock(FrozenMonotonicClock)
            .secure_random(SeededRandom::new(determinism.seed))
            .insecure_random(SeededRandom::new(determinism.seed ^ 0x5bd1_e995))
            .insecure_random_seed(
                u128::from(determinism.seed) << 64 | u128::from(!determinism.seed),
            )
            .max_random_size(1 << 20)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut table = ResourceTable::new();
        table.set_max_capacity(resource_table_capacity(memory_limit_bytes));
        SandboxState {
            wasi: builder.build(),
            table,
            limiter: MemoryLimiter::new(memory_limit_bytes),
            deadline,
        }
    }
}

/// Host memory per WASI resource-table entry, counted generously (the entry,
/// its boxed payload and its child set): what one guest-created stream,
/// pollable or socket costs the host outside the guest's memory cap.
pub(crate) const RESOURCE_ENTRY_HOST_BYTES: usize = 256;

/// The most WASI resources a call may hold at once: what fits in 1/16 of the
/// model's memory cap at [`RESOURCE_ENTRY_HOST_BYTES`] each (16,384 under
/// the default 64 MiB), never fewer than 1,024. wasmtime's own default is a
/// million, i.e. hundreds of MiB of host memory whatever the cap.
pub(crate) fn resource_table_capacity(memory_limit_bytes: usize) -> usize {
    (memory_limit_bytes / 16 / RESOURCE_ENTRY_HOST_BYTES).max(1024)
}

/// Replaces wasmtime-wasi's `wasi:io/poll` in `linker` (which must already
/// hold the rest of WASI) with one whose waits end at the call's deadline.
///
/// wasmtime-wasi's synchronous `poll` and `pollable.block` wait in real time
/// for as long as their pollables take, and epoch interruption cannot reach
/// a guest parked in the host: a `subscribe-duration` of 30 s held a call
/// with a 1 s deadline for 30 s, and a pollable that never fires held the
/// model's call slots forever. Every wait a guest can start passes through
/// these two functions (streams' blocking calls wait on the same readiness,
/// and the only streams the sandbox hands out are always ready).
pub(crate) fn link_deadline_bounded_poll(
    linker: &mut Linker<SandboxState>,
) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let linked = sync_poll::add_to_linker::<SandboxState, DeadlineBoundedPoll>(linker, |state| {
        BoundedWaits {
            table: &mut state.table,
            deadline: state.deadline,
        }
    });
    linker.allow_shadowing(false);
    linked
}

struct DeadlineBoundedPoll;

impl HasData for DeadlineBoundedPoll {
    type Data<'a> = BoundedWaits<'a>;
}

/// The resource table of a call with the instant its waits must end.
struct BoundedWaits<'a> {
    table: &'a mut ResourceTable,
    deadline: Instant,
}

impl BoundedWaits<'_> {
    /// Runs `wait` on the host's runtime until it ends or the deadline
    /// passes. A passed deadline is the trap an epoch interrupt raises, so
    /// the call fails exactly as a model computing past its deadline does.
    fn until_deadline<T>(
        deadline: Instant,
        wait: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        wasmtime_wasi::runtime::in_tokio(async move {
            match tokio::time::timeout_at(deadline.into(), wait).await {
                Ok(result) => result,
                Err(_elapsed) => Err(wasmtime::Error::new(Trap::Interrupt)),
            }
        })
    }
}

impl sync_poll::Host for BoundedWaits<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let deadline = self.deadline;
        Self::until_deadline(deadline, async_poll::Host::poll(self.table, pollables))
    }
}

impl sync_poll::HostPollable for BoundedWaits<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // Checks readiness without waiting for it.
        wasmtime_wasi::runtime::in_tokio(async_poll::HostPollable::ready(self.table, pollable))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let deadline = self.deadline;
        Self::until_deadline(
            deadline,
            async_poll::HostPollable::block(self.table, pollable),
        )
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

/// Caps linear memory and tables per instance and remembers whether the cap
/// was hit, so a trap that follows can be reported as resource exhaustion.
pub(crate) struct MemoryLimiter {
    memory_limit_bytes: usize,
    pub(crate) memory_limit_hit: bool,
    /// Linear memory of all the instance's memories now, and at most so far:
    /// what `riskhost model test` reports as the model's footprint.
    total_bytes: usize,
    pub(crate) peak_bytes: usize,
}

/// Tables are small in the models we know; this bounds hostile ones.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    fn new(memory_limit_bytes: usize) -> Self {
        MemoryLimiter {
            memory_limit_bytes,
            memory_limit_hit: false,
            total_bytes: 0,
            peak_bytes: 0,
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit_bytes {
            self.memory_limit_hit = true;
            return Ok(false);
        }
        self.total_bytes = self
            .total_bytes
            .saturating_add(desired.saturating_sub(current));
        self.peak_bytes = self.peak_bytes.max(self.total_bytes);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

struct FrozenWallClock(i64);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::from_secs(self.0.max(0).unsigned_abs())
    }
}

/// Monotonic time never advances inside a call: a model cannot time itself,
/// so its result cannot depend on how loaded the host is.
struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// SplitMix64 stream behind WASI's random interfaces. Not cryptographic:
/// models have no use for secrets, and reproducibility is the point.
struct SeededRandom {
    state: u64,
}

impl SeededRandom {
    fn new(seed: u64) -> Self {
        SeededRandom { state: seed }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.next() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// The stdout and stderr of one call, each kept up to a byte cap.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    pub(crate) stdout: TruncatingPipe,
    pub(crate) stderr: TruncatingPipe,
}

impl CapturedOutput {
    pub(crate) fn new(cap_bytes: usize) -> Self {
        CapturedOutput {
            stdout: TruncatingPipe::new(cap_bytes),
            stderr: TruncatingPipe::new(cap_bytes),
        }
    }
}

/// An output stream that keeps the first `cap` bytes and silently drops the
/// rest. Unlike wasmtime's `MemoryOutputPipe` it never fails a write: a model
/// that prints too much must not be turned into a model that traps.
#[derive(Clone)]
pub(crate) struct TruncatingPipe {
    inner: Arc<Mutex<PipeBuffer>>,
}

struct PipeBuffer {
    cap: usize,
    kept: Vec<u8>,
    dropped: u64,
}

impl TruncatingPipe {
    pub(crate) fn new(cap: usize) -> Self {
        TruncatingPipe {
            inner: Arc::new(Mutex::new(PipeBuffer {
                cap,
                kept: Vec::new(),
                dropped: 0,
            })),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut buf = match self.inner.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let room = buf.cap.saturating_sub(buf.kept.len());
        let take = room.min(bytes.len());
        buf.kept.extend_from_slice(&bytes[..take]);
        buf.dropped += (bytes.len() - take) as u64;
    }

    /// What was kept so far (lossy UTF-8), leaving it in place.
    pub(crate) fn contents(&self) -> String {
        match self.inner.lock() {
            Ok(b) => String::from_utf8_lossy(&b.kept).into_owned(),
            Err(poisoned) => String::from_utf8_lossy(&poisoned.into_inner().kept).into_owned(),
        }
    }

    /// What was kept (lossy UTF-8) and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut buf = match self.inner.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let text = String::from_utf8_lossy(&buf.kept).into_owned();
        let dropped = buf.dropped;
        buf.kept.clear();
        buf.dropped = 0;
        (text, dropped)
    }
}

impl IsTerminal for TruncatingPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TruncatingPipe {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for TruncatingPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for TruncatingPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for TruncatingPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn truncating_pipe_keeps_the_head_and_counts_the_rest() {
        let pipe = TruncatingPipe::new(4);
        pipe.append(b"abc");
        pipe.append(b"defg");
        assert_eq!(pipe.contents(), "abcd");
        assert_eq!(pipe.take(), ("abcd".to_owned(), 3));
        assert_eq!(pipe.take(), (String::new(), 0));
    }

    #[test]
    fn seeded_random_is_reproducible_and_seed_dependent() {
        let draw = |seed| {
            let mut r = SeededRandom::new(seed);
            let mut bytes = [0u8; 13];
            r.fill_bytes(&mut bytes);
            (r.next_u64(), bytes)
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
