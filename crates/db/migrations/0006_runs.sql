-- Risk runs on NATS JetStream (`--runs nats`): each run's spec, status and
-- counters, and each chunk's portfolios and state. NATS carries only
-- (run, chunk) references; results go to ClickHouse (`run_results`).
-- `__SCHEMA__` is replaced by the configured schema (--postgres-schema).

CREATE TABLE __SCHEMA__.runs (
    id               text PRIMARY KEY,
    key_id           text NOT NULL,
    status           text NOT NULL DEFAULT 'planned'
                     CHECK (status IN ('planned', 'running', 'completed', 'completed_with_failures', 'cancelled')),
    -- Model name → the digest it is pinned to for the whole run.
    digests          jsonb NOT NULL,
    params           jsonb NOT NULL,
    as_of            date NOT NULL,
    -- False while the submission is read: such a run was never answered
    -- 202, is not listed, and is deleted if its planner died.
    accepted         boolean NOT NULL DEFAULT false,
    portfolios       bigint NOT NULL DEFAULT 0,
    chunks_total     bigint NOT NULL DEFAULT 0,
    -- Chunks 0..chunks_published are on the stream; the rest are published
    -- by whichever replica sees NATS first.
    chunks_published bigint NOT NULL DEFAULT 0,
    chunks_done      bigint NOT NULL DEFAULT 0,
    chunks_failed    bigint NOT NULL DEFAULT 0,
    cells_ok         bigint NOT NULL DEFAULT 0,
    cells_failed     bigint NOT NULL DEFAULT 0,
    submitted_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK (chunks_done + chunks_failed <= chunks_total)
);
CREATE INDEX runs_by_key ON __SCHEMA__.runs (key_id, submitted_at DESC);
CREATE INDEX runs_unfinished ON __SCHEMA__.runs (status)
    WHERE status IN ('planned', 'running');

CREATE TABLE __SCHEMA__.run_chunks (
    run_id       text NOT NULL REFERENCES __SCHEMA__.runs (id) ON DELETE CASCADE,
    chunk        bigint NOT NULL CHECK (chunk >= 0),
    first_index  bigint NOT NULL,
    portfolios   integer NOT NULL CHECK (portfolios > 0),
    -- The chunk's portfolios, one JSON object per line.
    input        bytea NOT NULL,
    -- `pending` until its results are written (`done`) or it is
    -- quarantined (`failed`); only that first change counts in `runs`.
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    cells_ok     integer NOT NULL DEFAULT 0,
    cells_failed integer NOT NULL DEFAULT 0,
    -- Times a worker began scoring it. A chunk begun `--run-max-deliveries`
    -- times without results (its workers died, or it failed) is
    -- quarantined; deliveries that found PostgreSQL or ClickHouse away do
    -- not count.
    starts       integer NOT NULL DEFAULT 0,
    -- Why its last delivery failed as a whole, if it did.
    last_error   text,
    -- Set when quarantined: the portfolios it held and why.
    failure      jsonb,
    PRIMARY KEY (run_id, chunk)
);
