"""Generated Python clients against a live riskhost (tests/it/api_tools.rs).

Usage: generated_clients.py BASE_URL TOKEN WORK_DIR

Generates a client from the server's /openapi.json with each of two
generators, on their default settings, then calls the server through each
one as an API client would: list the models, score one portfolio, score a
batch (JSON) in which one cell fails, and roll back with the default
(absent) body. Every answer must come back as the generator's typed model,
not as raw JSON or `None`. Prints one JSON object: per generator, what it
read, for the test to compare with the server's own answers.

- openapi-python-client (httpx + attrs models);
- openapi-generator `-g python` (urllib3 + pydantic models), run from the
  jar that PyPI's openapi-generator-cli ships, with spec validation on.
"""

import importlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

BASE, TOKEN, WORK = sys.argv[1], sys.argv[2], Path(sys.argv[3])
BIN = Path(sys.executable).parent

PORTFOLIO = [("AAPL", 100.0), ("SPX", -3.0), ("GOLD", 12.5)]
BAD_INSTRUMENT = "NO-SUCH-INSTRUMENT"


def generate():
    document = WORK / "openapi.json"
    with urllib.request.urlopen(f"{BASE}/openapi.json") as answer:
        document.write_bytes(answer.read())
    subprocess.run(
        [BIN / "openapi-python-client", "generate", "--path", document, "--output-path", WORK / "opc"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [
            BIN / "openapi-generator-cli", "generate", "-i", document, "-g", "python",
            "-o", WORK / "oag", "--additional-properties", "packageName=riskhost_oag",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sys.path[:0] = [str(WORK / "opc"), str(WORK / "oag")]


def with_openapi_python_client():
    client_module = importlib.import_module("riskhost_client")
    models = importlib.import_module("riskhost_client.models")
    list_models = importlib.import_module("riskhost_client.api.models.list_models")
    rollback = importlib.import_module("riskhost_client.api.models.rollback")
    score = importlib.import_module("riskhost_client.api.scoring.score")
    score_batch = importlib.import_module("riskhost_client.api.scoring.score_batch")
    client = client_module.AuthenticatedClient(base_url=BASE, token=TOKEN)

    listed = list_models.sync(client=client)
    assert isinstance(listed, models.ModelsView), repr(listed)
    positions = [models.PositionInput(instrument=i, quantity=q) for i, q in PORTFOLIO]
    scored = score.sync(
        client=client,
        body=models.ScoreRequest(
            model="var-historical", portfolio=models.PortfolioInput(positions=positions)
        ),
    )
    assert isinstance(scored, models.ScoreResponse), repr(scored)
    bad = [models.PositionInput(instrument=BAD_INSTRUMENT, quantity=1.0)]
    batch = score_batch.sync(
        client=client,
        body=models.BatchRequest(
            models=["var-historical", "es-historical"],
            portfolios=[
                models.PortfolioInput(positions=positions),
                models.PortfolioInput(positions=bad),
                models.PortfolioInput(id="tech"),
            ],
        ),
    )
    assert isinstance(batch, models.BatchResponse), repr(batch)
    for cell in batch.results:
        assert isinstance(cell, models.BatchCell), repr(cell)
    # No body: the generated call sends none, or `null`.
    rolled = rollback.sync("var-historical", client=client)
    assert isinstance(rolled, models.ErrorBody), repr(rolled)
    return {
        "models": sorted(m.name for m in listed.models),
        "score": scored.value,
        "digest": scored.digest,
        "cells": [
            {
                "portfolio_index": c.portfolio_index,
                "model": c.model,
                # An absent field is the client's `UNSET`, not a float.
                "value": c.value if isinstance(c.value, float) else None,
                "error": c.error.code if isinstance(c.error, models.CellError) else None,
            }
            for c in batch.results
        ],
        "rollback": rolled.error.code,
    }


def with_openapi_generator():
    oag = importlib.import_module("riskhost_oag")
    configuration = oag.Configuration(host=BASE, access_token=TOKEN)
    api_client = oag.ApiClient(configuration)
    models_api = oag.ModelsApi(api_client)
    scoring = oag.ScoringApi(api_client)

    listed = models_api.list_models()
    assert isinstance(listed, oag.ModelsView), repr(listed)
    positions = [oag.PositionInput(instrument=i, quantity=q) for i, q in PORTFOLIO]
    scored = scoring.score(
        oag.ScoreRequest(model="var-historical", portfolio=oag.PortfolioInput(positions=positions))
    )
    assert isinstance(scored, oag.ScoreResponse), repr(scored)
    bad = [oag.PositionInput(instrument=BAD_INSTRUMENT, quantity=1.0)]
    batch = scoring.score_batch(
        oag.BatchRequest(
            models=["var-historical", "es-historical"],
            portfolios=[
                oag.PortfolioInput(positions=positions),
                oag.PortfolioInput(positions=bad),
                oag.PortfolioInput(id="tech"),
            ],
        )
    )
    assert isinstance(batch, oag.BatchResponse), repr(batch)
    for cell in batch.results:
        assert isinstance(cell, oag.BatchCell), repr(cell)
    # The default call: no body. A 409 arrives as the client's typed error.
    try:
        models_api.rollback("var-historical")
        rolled = "no error"
    except oag.exceptions.ConflictException as conflict:
        rolled = oag.ErrorBody.from_json(conflict.body).error.code
    return {
        "models": sorted(m.name for m in listed.models),
        "score": scored.value,
        "digest": scored.digest,
        "cells": [
            {
                "portfolio_index": c.portfolio_index,
                "model": c.model,
                "value": c.value,
                "error": c.error.code if c.error is not None else None,
            }
            for c in batch.results
        ],
        "rollback": rolled,
    }


def main():
    generate()
    print(
        json.dumps(
            {
                "openapi-python-client": with_openapi_python_client(),
                "openapi-generator": with_openapi_generator(),
            }
        )
    )


main()
