#!/usr/bin/env bash
# make soak: the long soak (tests/soak/soak.py) with its own registry for SOAK_SECONDS
# (default 600); the result JSON goes to tests/soak/results/last.json (commit it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p tests/soak/results
exec "$PY" -m tests.soak.soak --seconds "${SOAK_SECONDS:-600}" --seed "${SOAK_SEED:-0}" \
    --out tests/soak/results/last.json
