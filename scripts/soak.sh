#!/usr/bin/env bash
# make soak: the long soaks with their own registry for SOAK_SECONDS each (default 600):
# FUSE mounts/reads/takeovers (tests/soak/soak.py -> tests/soak/results/last.json), then
# containers on containerd + imgfs-snapshotter (tests/soak/soak_containers.py ->
# tests/soak/results/containers.json). Commit the result JSONs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p tests/soak/results
rc=0
"$PY" -m tests.soak.soak --seconds "${SOAK_SECONDS:-600}" --seed "${SOAK_SEED:-0}" \
    --out tests/soak/results/last.json || rc=1
"$PY" -m tests.soak.soak_containers --seconds "${SOAK_SECONDS:-600}" --seed "${SOAK_SEED:-0}" \
    --out tests/soak/results/containers.json || rc=1
exit $rc
