#!/usr/bin/env python3
"""Writes dashboards/riskhost.json, the Grafana dashboard of riskhost.

The dashboard is generated so that every panel follows one layout and the
metric names live in one place; edit this file, run it, commit both.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "prometheus"}
MODEL = 'model=~"$model"'


def panel(pid, title, exprs, x, y, unit="short", w=12, h=8, kind="timeseries", legend=None):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": (legend or [""] * len(exprs))[i]}
            for i, e in enumerate(exprs)
        ],
    }


def quantiles(metric, by, extra=""):
    sel = f"{{{extra}}}" if extra else ""
    return [
        f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{sel}[5m])))" for q in ("0.5", "0.99")
    ]


panels = [
    panel(1, "Scoring throughput (req/s) by route", [
        'sum by (route) (rate(riskhost_http_requests_total{route=~"/v1/score.*"}[1m]))'], 0, 0, "reqps",
        legend=["{{route}}"]),
    panel(2, "HTTP latency p50 / p99 by route", quantiles("riskhost_http_request_duration_seconds", "route"),
          12, 0, "s", legend=["p50 {{route}}", "p99 {{route}}"]),
    # By cause (riskhost_http_errors_total): `server` is what pages
    # (RiskhostErrorRateHigh); `model` and `caller` come from request content.
    panel(3, "Error answers by cause (share of requests) and model call failures", [
        'sum by (cause) (rate(riskhost_http_errors_total[5m])) / scalar(sum(rate(riskhost_http_requests_total[5m])))',
        'sum by (model, kind) (rate(riskhost_model_errors_total[5m]))'], 0, 8, "percentunit",
        legend=["{{cause}}", "{{model}} {{kind}} calls/s"]),
    panel(4, "Model call latency p50 / p99", quantiles("riskhost_model_call_duration_seconds", "model, version", MODEL),
          12, 8, "s", legend=["p50 {{model}} {{version}}", "p99 {{model}} {{version}}"]),
    panel(5, "Jobs scored per second by model and outcome", [
        f'sum by (model, outcome) (rate(riskhost_model_jobs_total{{{MODEL}}}[1m]))'], 0, 16, "ops",
        legend=["{{model}} {{outcome}}"]),
    # Every lookup records one tier="l1" result, and with Redis each l1 miss
    # one tier="l2" result: lookups are the l1 results, hits those of both
    # tiers (as RiskhostCacheHitRateLow counts them).
    panel(6, "Cache hit rate by model", [
        f'sum by (model) (rate(riskhost_cache_lookups_total{{result="hit",{MODEL}}}[5m])) '
        f'/ sum by (model) (rate(riskhost_cache_lookups_total{{tier="l1",{MODEL}}}[5m]))',
        'sum by (tier) (rate(riskhost_cache_lookups_total{result="hit"}[5m]))'], 12, 16, "percentunit",
        legend=["{{model}}", "hits/s {{tier}}"]),
    panel(7, "Batch sizes p50 / p99 (model calls and dynamic batches)",
          quantiles("riskhost_model_batch_size", "model", MODEL) + quantiles("riskhost_dynamic_batch_size", "model", MODEL),
          0, 24, "short",
          legend=["call p50 {{model}}", "call p99 {{model}}", "dynamic p50 {{model}}", "dynamic p99 {{model}}"]),
    panel(8, "Queue delay p99 and rejections", [
        f'histogram_quantile(0.99, sum by (le, model) (rate(riskhost_batch_queue_delay_seconds_bucket{{{MODEL}}}[5m])))',
        'sum by (model) (rate(riskhost_model_rejected_total[5m]))'], 12, 24, "s",
        legend=["p99 delay {{model}}", "rejected/s {{model}}"]),
    panel(9, "Database pools", [
        "sum by (pool) (riskhost_db_pool_in_use)", "sum by (pool) (riskhost_db_pool_idle)",
        "sum by (pool) (riskhost_db_pool_waiters)"], 0, 32, "short",
        legend=["in use {{pool}}", "idle {{pool}}", "waiters {{pool}}"]),
    panel(10, "Score events (ClickHouse sink)", [
        "riskhost_events_queued", "rate(riskhost_events_written_total[1m])", "rate(riskhost_events_spooled_total[1m])",
        "rate(riskhost_events_failed_total[1m])"], 12, 32, "short",
        legend=["queued", "written/s", "spooled/s", "failed/s"]),
    panel(11, "Models loaded, load failures, swaps", [
        "riskhost_models_loaded", "increase(riskhost_model_load_failures_total[1h])",
        "sum by (model) (increase(riskhost_model_swaps_total[1h]))"], 0, 40, "short",
        legend=["loaded", "load failures (1h)", "swaps (1h) {{model}}"]),
    panel(12, "In-flight HTTP requests and Redis latency p99", [
        "riskhost_http_requests_in_flight",
        "histogram_quantile(0.99, sum by (le, op) (rate(riskhost_redis_op_duration_seconds_bucket[5m])))"],
        12, 40, "short", legend=["in flight", "redis p99 {{op}} (s)"]),
    panel(13, "Score statistics routes: ClickHouse time p50 / p99 and answers by outcome",
          quantiles("riskhost_stats_query_seconds", "subject") + [
              "sum by (subject, outcome) (rate(riskhost_stats_requests_total[5m]))"],
          0, 48, "s", legend=["p50 {{subject}}", "p99 {{subject}}", "{{outcome}}/s {{subject}}"]),
]

# ClickHouse (grafana-clickhouse-datasource): the per-day aggregates the
# materialized views keep (docs/data-sources.md, "Score analytics").
CH = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
VAR_SQL = (
    "SELECT bucket AS time,\n"
    "  minIfMerge(vmin) AS min,\n"
    "  quantilesTDigestIfMerge(0.5, 0.95, 0.99)(vq)[1] AS p50,\n"
    "  quantilesTDigestIfMerge(0.5, 0.95, 0.99)(vq)[2] AS p95,\n"
    "  quantilesTDigestIfMerge(0.5, 0.95, 0.99)(vq)[3] AS p99,\n"
    "  maxIfMerge(vmax) AS max\n"
    "FROM riskhost.score_events_model_day\n"
    "WHERE model = '${ch_model}' AND $__timeFilter(bucket)\n"
    "GROUP BY bucket ORDER BY bucket"
)
panels.append({
    "id": 14,
    "type": "timeseries",
    "title": "Daily score distribution across portfolios: ${ch_model}",
    "description": "Per UTC day, over every score the model served (all portfolios and versions): "
                   "min, p50, p95, p99, max. From ClickHouse's score_events_model_day aggregates.",
    "datasource": CH,
    "repeat": "ch_model",
    "repeatDirection": "h",
    "maxPerRow": 2,
    "gridPos": {"x": 12, "y": 48, "w": 12, "h": 8},
    "fieldConfig": {"defaults": {"unit": "short"}, "overrides": []},
    "options": {"legend": {"displayMode": "table", "placement": "bottom"}},
    "targets": [{"refId": "A", "datasource": CH, "editorType": "sql", "queryType": "timeseries",
                 "format": 0, "rawSql": VAR_SQL}],
})

dashboard = {
    "uid": "riskhost",
    "title": "riskhost",
    "tags": ["riskhost"],
    "timezone": "utc",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [{
        "name": "model",
        "type": "query",
        "datasource": DS,
        "query": "label_values(riskhost_model_call_duration_seconds_count, model)",
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "allValue": ".*",
        "refresh": 2,
    }, {
        "name": "ch_model",
        "label": "model (ClickHouse)",
        "type": "query",
        "datasource": CH,
        "query": "SELECT DISTINCT model FROM riskhost.score_events_model_day ORDER BY model",
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }]},
    "panels": panels,
}

out = pathlib.Path(__file__).parent / "dashboards" / "riskhost.json"
out.write_text(json.dumps(dashboard, indent=2) + "\n")
print(f"wrote {out}")
