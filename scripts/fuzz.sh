#!/usr/bin/env bash
# make fuzz: coverage-guided fuzzing (atheris) of the bootstrap reader and the tar/layer reader.
# FUZZ_SECONDS per target (default 300). Writes fuzz/results/last.json; a crash exits non-zero
# and leaves crash-* files in fuzz/results/<target>/ (turn each into a test).
# Without atheris in the venv it runs the hypothesis property tests with many more examples.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
SECONDS_EACH=${FUZZ_SECONDS:-300}
OUT=fuzz/results
mkdir -p "$OUT"
if ! "$PY" -c "import atheris" 2>/dev/null; then
    echo "atheris not importable: long hypothesis run instead" >&2
    FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-20000} exec "$PY" -m pytest tests/reliability/test_fuzz_props.py -q -p no:cacheprovider
fi
results=()
status=0
for target in bootstrap blob_bootstrap tar; do
    work="$OUT/$target"
    mkdir -p "$work"
    log="$work/last.log"
    set +e
    (cd "$work" && PYTHONPATH="$PWD/../../.." "$PY" -m fuzz.run "$target" "$SECONDS_EACH" corpus) >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -oE '^Done [0-9]+ runs' "$log" | awk '{print $2}' | tail -1 || true)
    crashes=$(find "$work" -maxdepth 1 -name 'crash-*' | wc -l)
    results+=("{\"target\": \"$target\", \"seconds\": $SECONDS_EACH, \"runs\": ${runs:-0}, \"exit\": $rc, \"crashes\": $crashes, \"corpus\": $(find "$work/corpus" -type f | wc -l)}")
    [ "$rc" -eq 0 ] || status=1
done
{
    echo "{\"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"atheris\": \"$("$PY" -c 'import importlib.metadata as m; print(m.version("atheris"))')\", \"targets\": ["
    (IFS=,; echo "${results[*]}")
    echo "]}"
} > "$OUT/last.json"
cat "$OUT/last.json"
exit $status
