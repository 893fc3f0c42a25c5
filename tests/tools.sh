#!/usr/bin/env bash
# Installs the tools the tests drive besides the services: Debian's
# `prometheus` for promtool (tests/it/metrics.rs runs `promtool check
# metrics` on a scrape), Debian's
# headless `chromium` (the backtest report is rendered in it), Debian's
# `docker-registry` (distribution 2.8: each OCI test starts its own on a
# free port) and a Python virtualenv with scipy (tests/backtest_fixtures.py
# computes the backtest statistics independently with it) and oras (an
# independent OCI client for tests/it/oci.rs). Prints the venv's python,
# which tests/run.sh exports as RISKHOST_TEST_PYTHON. The same venv holds
# the API tools of tests/it/api_tools.rs: schemathesis, and two client
# generators (openapi-python-client; openapi-generator-cli, whose wheel
# carries the generator's jar and runs on the machine's Java 17) with what
# their generated clients import. Installs nothing present.
set -euo pipefail

SCIPY_VERSION=1.14.1
ORAS_VERSION=0.2.25
# The htpasswd file of a registry that requires credentials (tests/it/oci.rs).
BCRYPT_VERSION=4.2.1
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
OPENAPI_GENERATOR_VERSION=7.26.0
PYTHON_DATEUTIL_VERSION=2.9.0.post0

if ! command -v promtool >/dev/null 2>&1; then
    echo "installing promtool (Debian package prometheus)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! command -v chromium >/dev/null 2>&1; then
    echo "installing chromium (Debian package)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! command -v docker-registry >/dev/null 2>&1; then
    echo "installing docker-registry (Debian package)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi

venv="${XDG_CACHE_HOME:-$HOME/.cache}/riskhost/test-python-scipy-$SCIPY_VERSION"
if ! "$venv/bin/python" -c 'import scipy' >/dev/null 2>&1; then
    echo "installing scipy $SCIPY_VERSION into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "scipy==$SCIPY_VERSION" >&2
fi
if ! "$venv/bin/python" -c 'import oras.client, bcrypt' >/dev/null 2>&1; then
    echo "installing oras $ORAS_VERSION and bcrypt $BCRYPT_VERSION into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "oras==$ORAS_VERSION" "bcrypt==$BCRYPT_VERSION" >&2
fi
if ! "$venv/bin/python" -c 'import schemathesis, openapi_python_client, openapi_generator_cli, dateutil, pydantic' >/dev/null 2>&1; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION, openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION and openapi-generator-cli $OPENAPI_GENERATOR_VERSION into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION" \
        "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" \
        "openapi-generator-cli==$OPENAPI_GENERATOR_VERSION" \
        "python-dateutil==$PYTHON_DATEUTIL_VERSION" >&2
fi
if ! command -v java >/dev/null 2>&1; then
    echo "installing a Java runtime for openapi-generator (Debian package)" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
fi
echo "$venv/bin/python"
