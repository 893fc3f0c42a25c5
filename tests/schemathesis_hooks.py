"""Schemathesis hooks for tests/it/api_tools.rs: real names in generated requests.

Schemathesis draws requests from /openapi.json. A schema can say that a
model name is lower-kebab-case, but not which models a server serves, which
instruments it has prices for, or which portfolios it stores; without help
nearly every request would end at 404. These hooks put real values in the
requests that are meant to be valid (the "positive" ones), so the run
reaches the scoring, batch, backtest and admin paths behind the lookups.

Requests meant to be invalid (the "negative" ones) are left as drawn: each
must be refused with a 4xx on its own merits.

A value the schema cannot describe is also kept within what the server can
value: a quantity whose gross exposure overflows f64 is refused with 422 by
design (docs/sandbox.md), and parameters are per model (`GET /v1/models`
lists each one's name and range), so a valid request uses a model's own.

The test passes the server's facts in environment variables:
RISKHOST_ST_MODELS (the JSON of `GET /v1/models`), RISKHOST_ST_INSTRUMENTS
and RISKHOST_ST_PORTFOLIOS (JSON arrays of strings).
"""

import datetime
import json
import os
import zlib

import schemathesis

MODELS = json.loads(os.environ.get("RISKHOST_ST_MODELS", '{"models": []}'))["models"]
MODEL_NAMES = [m["name"] for m in MODELS] or ["var-historical"]
INSTRUMENTS = json.loads(os.environ.get("RISKHOST_ST_INSTRUMENTS", '["SPX"]'))
PORTFOLIOS = json.loads(os.environ.get("RISKHOST_ST_PORTFOLIOS", '["balanced"]'))
LAST_MONTH = "2018-12-01"
# A registry of the test's own (`host:port`), reached over plain HTTP: a
# valid `{"oci": …}` upload names a repository there instead of one on the
# internet, which this machine cannot reach (502 `oci_unreachable`).
OCI_REGISTRY = os.environ.get("RISKHOST_ST_OCI_REGISTRY")
# Where the served models' components are (`NAME.wasm`): a valid upload is
# one of them, under its own name; no schema can draw a working component.
COMPONENTS = os.environ.get("RISKHOST_ST_COMPONENTS")
# The first and last dates of the market data: a valid as_of lies between.
FIRST_DATE, LAST_DATE = json.loads(os.environ.get("RISKHOST_ST_DATES", '["2017-06-01", "2018-12-31"]'))
# Quantities of real portfolios; the gross-exposure bound is far above.
MAX_QUANTITY = 1e7


def pick(options, drawn):
    """The same drawn value always maps to the same real one (runs are seeded)."""
    return options[zlib.crc32(repr(drawn).encode()) % len(options)]


def model_params(name, drawn):
    """A valid parameter set of model `name`: a drawn subset of its own
    parameters (`info.params`), each between its minimum and twice its
    default, within its maximum: a drawn lookback near the maximum would
    ask for more history than the data holds, which is a 422 of its own."""
    model = next((m for m in MODELS if m["name"] == name), None)
    if model is None:
        return {}
    params = {}
    for spec in model["info"].get("params", []):
        key = f"{drawn!r}:{spec['name']}".encode()
        if zlib.crc32(key) % 2:
            continue
        low, default, high = spec["min"], spec["default"], spec["max"]
        top = min(high, 2 * default) if default > 0 else high
        value = low + (top - low) * (zlib.crc32(key + b"v") % 1000) / 1000
        params[spec["name"]] = float(round(value)) if spec.get("integer") else value
    return params


def real_portfolio(portfolio):
    if not isinstance(portfolio, dict):
        return portfolio
    positions = portfolio.get("positions")
    if isinstance(positions, list):
        seen = set()
        for position in positions:
            if not isinstance(position, dict):
                continue
            if isinstance(position.get("instrument"), str):
                position["instrument"] = pick(INSTRUMENTS, position["instrument"])
                seen.add(position["instrument"])
            quantity = position.get("quantity")
            if isinstance(quantity, (int, float)) and abs(quantity) > MAX_QUANTITY:
                position["quantity"] = MAX_QUANTITY if quantity > 0 else -MAX_QUANTITY
        # A portfolio whose positions net to nothing has no risk to measure
        # (422 `invalid_portfolio`); give the first one a quantity.
        netted = {}
        for position in positions:
            if isinstance(position, dict) and isinstance(position.get("quantity"), (int, float)):
                key = position.get("instrument")
                netted[key] = netted.get(key, 0) + position["quantity"]
        if netted and all(q == 0 for q in netted.values()):
            first = next(p for p in positions if isinstance(p, dict) and "quantity" in p)
            first["quantity"] = 1.0 if first["quantity"] == 0 else 2 * first["quantity"]
    elif isinstance(portfolio.get("id"), str):
        portfolio["id"] = pick(PORTFOLIOS, portfolio["id"])
    else:
        # `{"id": null}` fits the schema's one-property minimum, but names
        # no portfolio (the description says: positions, or an id).
        portfolio["id"] = pick(PORTFOLIOS, repr(portfolio))
    return portfolio


def real_body(path, body):
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("model"), str):
        body["model"] = pick(MODEL_NAMES, body["model"])
    if isinstance(body.get("oci"), str) and OCI_REGISTRY:
        repository = pick(MODEL_NAMES, body["oci"])
        body["oci"] = f"{OCI_REGISTRY}/models/{repository}:{zlib.crc32(body['oci'].encode())}"
    if isinstance(body.get("models"), list):
        names = [pick(MODEL_NAMES, m) if isinstance(m, str) else m for m in body["models"]]
        # Each model at most once (the schema says `uniqueItems`).
        body["models"] = list(dict.fromkeys(names))
    if isinstance(body.get("portfolio"), dict):
        body["portfolio"] = real_portfolio(body["portfolio"])
    if isinstance(body.get("portfolios"), list):
        body["portfolios"] = [real_portfolio(p) for p in body["portfolios"]]
    selection = body.get("portfolios")
    if isinstance(selection, dict):
        # A run's selection: inline portfolios, or stored ids.
        if isinstance(selection.get("inline"), list):
            selection["inline"] = [real_portfolio(p) for p in selection["inline"]]
        if isinstance(selection.get("ids"), list):
            selection["ids"] = [pick(PORTFOLIOS, i) if isinstance(i, str) else i for i in selection["ids"]]
    if isinstance(body.get("as_of"), str) and not FIRST_DATE <= body["as_of"] <= LAST_DATE:
        body["as_of"] = LAST_DATE
    if isinstance(body.get("params"), dict):
        name = body.get("model") or next(iter(body.get("models") or []), None)
        body["params"] = model_params(name, body["params"])
    return body


def real_query(path, query):
    """A `from` before `to`, as the history and statistics routes require,
    and for statistics a range of at most 1,000 buckets (`too_many_buckets`
    past it): a drawn `from` decades ago is moved to a week ago."""
    start, end = query.get("from"), query.get("to")
    if isinstance(start, str) and isinstance(end, str) and start[:10] >= end[:10]:
        del query["to"]
    if path.endswith("/stats") and isinstance(query.get("from"), str):
        query.pop("to", None)
        query["from"] = (datetime.date.today() - datetime.timedelta(days=7)).isoformat()
    return query


def real_backtest(body):
    """A window inside the data with room for the lookback before it."""
    start, end = body.get("from"), body.get("to")
    if not (isinstance(start, str) and isinstance(end, str)):
        return body
    if not FIRST_DATE <= start < end <= LAST_DATE:
        body["from"], body["to"] = FIRST_DATE, LAST_DATE
    # Portfolios × days within --backtest-max-cells (250,000): many
    # portfolios get the last month only.
    if len(body.get("portfolios") or []) > 100:
        body["from"] = max(body["from"], LAST_MONTH)
    return body


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or meta.generation.mode.is_positive:
        make_real(case)
    return case


@schemathesis.hook
def before_add_examples(context, examples):
    """The document's own examples are valid requests too."""
    for case in examples:
        make_real(case)


def make_real(case):
    # A signature no schema can draw: a valid one signs these very bytes
    # with a trusted key. Uploads without one are valid here (signatures
    # are optional without --require-signatures).
    if case.headers:
        case.headers.pop("x-riskhost-signature", None)
    path = case.operation.path
    if case.path_parameters:
        for key in ("name", "model"):
            if isinstance(case.path_parameters.get(key), str):
                case.path_parameters[key] = pick(MODEL_NAMES, case.path_parameters[key])
        if path.startswith("/v1/portfolios/") and isinstance(case.path_parameters.get("id"), str):
            case.path_parameters["id"] = pick(PORTFOLIOS, case.path_parameters["id"])
    if isinstance(case.query, dict):
        case.query = real_query(path, case.query)
    # Binary bodies come as bytes, or wrapped (schemathesis' `Binary`).
    binary = isinstance(case.body, (bytes, bytearray)) or isinstance(
        getattr(case.body, "data", None), bytes
    )
    if binary and COMPONENTS and case.path_parameters:
        name = case.path_parameters.get("name")
        component = os.path.join(COMPONENTS, f"{name}.wasm")
        if isinstance(name, str) and os.path.exists(component):
            with open(component, "rb") as f:
                case.body = f.read()
    if isinstance(case.body, dict):
        case.body = real_body(path, case.body)
        if path == "/v1/backtests":
            case.body = real_backtest(case.body)
