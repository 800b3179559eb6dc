# Two commands matter: `make run` (the demo pipeline) and `make test`. Each sets itself up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kgops-installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,dev]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kgops-demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check kg_ops dags plugins tests benchmarks

bench: $(STAMP)
	@test -n "$(BENCH)" || { echo "usage: make bench BENCH=bench_import|bench_synth|bench_encode|bench_partition|bench_train|bench_evaluate|bench_trigger_lag [ARGS='...']"; exit 2; }
	$(PY) -m benchmarks.$(BENCH) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
