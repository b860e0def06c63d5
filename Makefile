# imgfs: `make demo` and `make test` work on a fresh Debian machine.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -q

.PHONY: demo test bench lint soak fuzz sysdeps venv proto clean

sysdeps:
	@bash scripts/sysdeps.sh

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

venv: sysdeps $(STAMP) proto

proto: $(STAMP)
	@if [ -d snapshotter/proto ]; then $(VPY) -m snapshotter.protogen; fi

test: venv
	$(VPY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(VPY) -m scripts.demo

bench: venv
	$(VPY) -m benchmarks.convert
	$(VPY) -m benchmarks.fusefs
	$(VPY) -m benchmarks.pagefill
	$(VPY) -m benchmarks.cli run --quick --out benchmarks/results/imgbench-quick

soak: venv
	bash scripts/soak.sh

fuzz: venv
	bash scripts/fuzz.sh

lint: venv
	$(VPY) -m ruff check .

clean:
	rm -rf $(VENV) .cache
