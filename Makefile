# Two entry points (see README): `make bench` runs the default suite and its report; `make test` runs the tests.
# Both create .venv from constraints.txt on first use (pip finds the pinned torch wheels locally where they exist).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

.PHONY: install bench test test-all
install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/bench run --out results/default
	$(VENV)/bin/bench report results/default

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m ""
