//! The HTTP load generator of the service scenarios: N keep-alive HTTP/1.1
//! connections (hyper's client on tokio), every latency recorded in an HDR
//! histogram, every failure counted.
//!
//! Two ways of pacing, chosen per measurement:
//!
//! - **Closed loop** (`rate: None`): each connection sends its next request
//!   as soon as it has read the previous answer — N clients that wait for
//!   their answers, like a connection pool. This measures the throughput at
//!   saturation and the latency those N clients saw. While the server stalls
//!   it sends fewer requests, so its percentiles describe those N clients, not
//!   an open stream of users; the table never presents them as latencies at
//!   a fixed rate.
//! - **Fixed rate** (`rate: Some(r)`): every connection follows a schedule
//!   (r/N requests per second each) and a request's latency is measured from
//!   the time it was *due*, not the time it was sent. A stall therefore counts
//!   against every request it delayed, which is what keeps the percentiles
//!   free of coordinated omission.
//!
//! A response counts as an error unless it is a 200 whose body was read in
//! full within [`REQUEST_TIMEOUT`]; connection failures count too (and the
//! connection is reopened).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request that takes longer than this counts as failed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The bench's API key, `bench.<secret>`: made once per run; every
/// server started by the run is given its digest, every request carries it.
pub(crate) fn bearer_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        riskhost_auth::generate_token("bench")
            .unwrap_or_else(|e| panic!("cannot make the bench's API key: {e}"))
    })
}

fn with_authorization(builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
    // Built once: the generator's own cost per request stays small.
    static VALUE: OnceLock<header::HeaderValue> = OnceLock::new();
    let value = VALUE.get_or_init(|| {
        header::HeaderValue::from_str(&format!("Bearer {}", bearer_token()))
            .unwrap_or_else(|e| panic!("the bench's API key is not a header value: {e}"))
    });
    builder.header(header::AUTHORIZATION, value.clone())
}

/// The body of request number `n` (numbers are unique within a [`Target`]).
pub(crate) type BodyFn = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;
/// Called with every successful response body and the time it was read.
pub(crate) type InspectFn = Arc<dyn Fn(&[u8], Instant) + Send + Sync>;

/// Where the load goes and what it sends.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) path: String,
    pub(crate) body: BodyFn,
    pub(crate) inspect: Option<InspectFn>,
    /// Numbers the requests; shared by every phase of every run against this
    /// target, so "a new portfolio per request" stays new across repetitions.
    counter: Arc<AtomicU64>,
}

impl Target {
    /// POSTs of `body(n)` to `path` (JSON).
    pub(crate) fn post(addr: SocketAddr, path: &str, body: BodyFn) -> Target {
        Target {
            addr,
            path: path.to_owned(),
            body,
            inspect: None,
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same body on every request.
    pub(crate) fn post_fixed(addr: SocketAddr, path: &str, body: Bytes) -> Target {
        Target::post(addr, path, Arc::new(move |_: u64| body.clone()))
    }

    pub(crate) fn inspect(mut self, f: InspectFn) -> Target {
        self.inspect = Some(f);
        self
    }
}

/// How one phase ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this long (requests in flight then still finish and count).
    After(Duration),
    /// After this many requests in all.
    Count(u64),
}

/// What one phase (a repetition, or the warm-up) measured.
pub(crate) struct Phase {
    pub(crate) elapsed: Duration,
    /// Latencies of every answered request (successful or not), in µs.
    pub(crate) histogram: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Phase {
    pub(crate) fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A measurement: its repetitions, and their latencies merged.
pub(crate) struct Outcome {
    /// Successful requests per second, one value per repetition.
    pub(crate) throughput: Vec<f64>,
    pub(crate) histogram: Histogram<u64>,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Outcome {
    /// Latency at quantile `q`, in milliseconds.
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }
}

/// `connections` connections, a warm-up (not recorded), then `reps`
/// repetitions of `rep` each; `rate` = total requests per second, or `None`
/// for a closed loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) connections: usize,
    pub(crate) warm_up: Duration,
    pub(crate) rep: Stop,
    pub(crate) reps: usize,
    pub(crate) rate: Option<f64>,
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; never fails for these bounds.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Runs `plan` against `target`.
pub(crate) async fn run(target: &Target, plan: Plan) -> anyhow::Result<Outcome> {
    if !plan.warm_up.is_zero() {
        phase(
            target,
            plan.connections,
            Stop::After(plan.warm_up),
            plan.rate,
        )
        .await?;
    }
    let mut outcome = Outcome {
        throughput: Vec::new(),
        histogram: histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    for _ in 0..plan.reps.max(1) {
        let p = phase(target, plan.connections, plan.rep, plan.rate).await?;
        outcome.throughput.push(p.throughput());
        outcome
            .histogram
            .add(&p.histogram)
            .context("merging latency histograms")?;
        outcome.ok += p.ok;
        outcome.errors += p.errors;
        if outcome.first_error.is_none() {
            outcome.first_error = p.first_error;
        }
    }
    Ok(outcome)
}

/// One phase: `connections` tasks until `stop`.
pub(crate) async fn phase(
    target: &Target,
    connections: usize,
    stop: Stop,
    rate: Option<f64>,
) -> anyhow::Result<Phase> {
    let (run_for, end) = match stop {
        Stop::After(d) => (Some(d), None),
        Stop::Count(n) => (None, Some(target.counter.load(Ordering::Relaxed) + n)),
    };
    let connections = connections.max(1);
    // Each connection's share of the rate, staggered so they do not fire together.
    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1e-9)));
    // The clock starts once every connection is open: opening 1,000 of them
    // takes a while, and counting that against the first requests' due
    // times would put connection set-up into the latency tail.
    let ready = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let target = target.clone();
        let schedule = Schedule {
            ready: ready.clone(),
            run_for,
            end,
            first_due: interval.map(|i| i.mul_f64(c as f64 / connections as f64)),
            interval,
        };
        tasks.push(tokio::spawn(connection(target, schedule)));
    }
    ready.wait().await;
    let started = Instant::now();
    let mut phase = Phase {
        elapsed: Duration::ZERO,
        histogram: histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    for task in tasks {
        let c = task.await.context("a load connection panicked")?;
        phase
            .histogram
            .add(&c.histogram)
            .context("merging histograms")?;
        phase.ok += c.ok;
        phase.errors += c.errors;
        if phase.first_error.is_none() {
            phase.first_error = c.first_error;
        }
    }
    phase.elapsed = started.elapsed();
    Ok(phase)
}

struct Connection {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Connection {
    fn fail(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

/// When one connection sends: the phase's start barrier, its length or
/// request budget, and for fixed rates the offset of this connection's
/// first request and its interval.
struct Schedule {
    ready: Arc<tokio::sync::Barrier>,
    run_for: Option<Duration>,
    end: Option<u64>,
    first_due: Option<Duration>,
    interval: Option<Duration>,
}

async fn connection(target: Target, schedule: Schedule) -> Connection {
    let Schedule {
        ready,
        run_for,
        end,
        first_due,
        interval,
    } = schedule;
    let mut c = Connection {
        histogram: histogram(),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    let host = target.addr.to_string();
    let mut deadline = None;
    let mut due = None;
    let mut started = false;
    'connect: loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let opened = connect(target.addr).await;
        if !started {
            // Every connection reaches the barrier once, opened or not, so a
            // failed connect cannot stall the others.
            started = true;
            ready.wait().await;
            let now = Instant::now();
            deadline = run_for.map(|d| now + d);
            due = first_due.map(|offset| now + offset);
        }
        let mut sender = match opened {
            Ok(s) => s,
            Err(e) => {
                c.fail(format!("connect: {e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break 'connect;
            }
            let n = target.counter.fetch_add(1, Ordering::Relaxed);
            if end.is_some_and(|e| n >= e) {
                break 'connect;
            }
            let sent_or_due = match (due, interval) {
                (Some(t), Some(i)) => {
                    tokio::time::sleep_until(t.into()).await;
                    due = Some(t + i);
                    t
                }
                _ => Instant::now(),
            };
            let request = with_authorization(Request::builder())
                .method(Method::POST)
                .uri(target.path.as_str())
                .header(header::HOST, host.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new((target.body)(n)));
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    c.fail(format!("building the request: {e}"));
                    break 'connect;
                }
            };
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await;
            let done = Instant::now();
            let micros = u64::try_from(done.saturating_duration_since(sent_or_due).as_micros())
                .unwrap_or(u64::MAX);
            match answer {
                Ok(Ok((200, body))) => {
                    c.histogram.saturating_record(micros.max(1));
                    c.ok += 1;
                    if let Some(inspect) = &target.inspect {
                        inspect(&body, done);
                    }
                }
                Ok(Ok((status, body))) => {
                    c.histogram.saturating_record(micros.max(1));
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                    c.fail(format!("HTTP {status}: {text}"));
                }
                Ok(Err(e)) => {
                    c.fail(format!("request: {e}"));
                    continue 'connect;
                }
                Err(_) => {
                    c.fail(format!("no answer within {REQUEST_TIMEOUT:?}"));
                    continue 'connect;
                }
            }
        }
    }
    c
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes; errors show
        // up on the request that was in flight.
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request on a fresh connection: `(status, body)`. For control
/// requests (readiness, warming the memo), not for measurements.
pub(crate) async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    request_typed(addr, method, path, "application/json", body).await
}

/// [`request`] with a body of `content_type` (a component upload).
pub(crate) async fn request_typed(
    addr: SocketAddr,
    method: Method,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let request = with_authorization(Request::builder())
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))?;
    let answer = tokio::time::timeout(Duration::from_secs(600), async {
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    })
    .await
    .with_context(|| format!("{path}: no answer in 10 minutes"))??;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A local axum server that answers 200 except for bodies saying "fail".
    async fn server() -> anyhow::Result<SocketAddr> {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/x",
            post(|body: Bytes| async move {
                if body.as_ref() == b"fail" {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "no")
                } else {
                    (axum::http::StatusCode::OK, "yes")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(addr)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counts_requests_errors_and_latencies() -> anyhow::Result<()> {
        let addr = server().await?;
        let target = Target::post(
            addr,
            "/x",
            Arc::new(|n: u64| Bytes::from(if n % 4 == 3 { "fail" } else { "ok" })),
        );
        let plan = Plan {
            connections: 3,
            warm_up: Duration::ZERO,
            rep: Stop::Count(40),
            reps: 2,
            rate: None,
        };
        let outcome = run(&target, plan).await?;
        assert_eq!(outcome.ok + outcome.errors, 80);
        assert_eq!(outcome.errors, 20);
        assert_eq!(outcome.histogram.len(), 80);
        assert!(
            outcome
                .first_error
                .is_some_and(|e| e.starts_with("HTTP 500"))
        );
        assert_eq!(outcome.throughput.len(), 2);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_server_is_counted_as_errors() -> anyhow::Result<()> {
        // Bind and drop: nothing listens on the port any more.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?;
        let target = Target::post_fixed(addr, "/x", Bytes::new());
        let p = phase(&target, 2, Stop::After(Duration::from_millis(100)), None).await?;
        assert_eq!(p.ok, 0);
        assert!(p.errors > 0);
        Ok(())
    }
}
