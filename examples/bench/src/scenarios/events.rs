//! Scenario 9: what recording score events costs a request, with the events
//! held in memory until written (the default) and in durable mode, where each
//! answer waits for its event's group-committed fsync in the local spool.
//! L1 hits show the cost most plainly (the cheapest request there is); misses
//! show it next to a model call. Events go to a real ClickHouse
//! (`RISKHOST_BENCH_CLICKHOUSE_URL`, default the one `tests/clickhouse.sh`
//! starts), a database of its own per server.

use std::sync::Arc;

use super::http::median;
use super::{Context, load_row, ratio, score_body};
use crate::loadgen::Target;
use crate::report::{Row, number};
use crate::service::Scratch;

const SCENARIO: &str = "score events";
const MODEL: &str = "var-historical";
const UNIQUE_FROM: u64 = 2_000_000;
const CONNECTIONS: usize = 64;

pub(crate) fn run(ctx: &Context) -> anyhow::Result<Vec<Row>> {
    let clickhouse = std::env::var("RISKHOST_BENCH_CLICKHOUSE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    let data = Scratch::new("events")?;
    let dist = ctx.dist_arg();
    let serve = |mode: &str, durable: bool| {
        let database = format!("bench_events_{mode}_{}", std::process::id());
        let args = [
            "--plugins",
            dist.as_str(),
            "--watch",
            "false",
            "--clickhouse-url",
            clickhouse.as_str(),
            "--clickhouse-database",
            database.as_str(),
            "--events-durable",
            if durable { "true" } else { "false" },
        ];
        ctx.host.serve(&data.join(mode), &args)
    };
    let memory = serve("memory", false)?;
    let durable = serve("durable", true)?;
    let fixed = score_body(MODEL, 10);
    memory.post_ok("/v1/score", fixed.clone())?;
    durable.post_ok("/v1/score", fixed.clone())?;
    let unique =
        || -> crate::loadgen::BodyFn { Arc::new(|n: u64| score_body(MODEL, UNIQUE_FROM + n)) };
    let plan = ctx.load.closed(CONNECTIONS);
    let mut rows = Vec::new();
    for (path, target_of) in [
        (
            "L1 hit",
            Box::new(|addr| Target::post_fixed(addr, "/v1/score", fixed.clone()))
                as Box<dyn Fn(std::net::SocketAddr) -> Target>,
        ),
        (
            "miss (model call)",
            Box::new(|addr| Target::post(addr, "/v1/score", unique())),
        ),
    ] {
        let in_memory = super::http::measure(ctx, &target_of(memory.addr), plan)?;
        let memory_rps = median(&in_memory.throughput);
        rows.push(
            load_row(
                SCENARIO,
                format!("{path}, events in memory (default) · {CONNECTIONS} conns"),
                &in_memory,
            )
            .reference("1.00×".to_owned()),
        );
        let synced = super::http::measure(ctx, &target_of(durable.addr), plan)?;
        let durable_rps = median(&synced.throughput);
        rows.push(
            load_row(
                SCENARIO,
                format!("{path}, events durable (fsync, group commit) · {CONNECTIONS} conns"),
                &synced,
            )
            .reference(format!(
                "{} in memory ({} req/s)",
                ratio(durable_rps, memory_rps),
                number(memory_rps)
            )),
        );
    }
    drop((memory, durable));
    Ok(rows)
}
