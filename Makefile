# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-pitr test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/drdrill demo

demo-pitr: $(STAMP)
	$(BIN)/drdrill demo --pitr

# Three pytest-xdist workers, one test file each at a time (module fixtures stay shared): most of a
# drill test waits on Temporal, PostgreSQL or a subprocess, so three fit on two cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --durations=25

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/drdrill lint drills/*.yaml

clean:
	rm -rf $(VENV) .pytest_cache
