# Two entry points (see README): `make bench` runs the default suite and its report; `make test` runs the tests.
# Both create .venv from constraints.txt on first use (pip finds the pinned torch wheels locally where they exist).
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test]"
	# The original reward packages, only for the tests that compare our scores with theirs. Their pins
	# (pytest==7.2, protobuf<4, timm==0.6.13, ...) would break the environment, so they go to a side folder.
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation --target build/originals \
		hpsv2x==1.2.0 image-reward==1.5 fairscale==0.4.13 clint==0.5.1 args==0.1.0
	touch $(STAMP)

.PHONY: install bench test test-all
install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/bench run --out results/default
	$(VENV)/bin/bench report results/default

# One pytest-xdist worker per core, at most 4 (each a torch process; a testbed run peaks at ~1.2 GiB): on 2 cores the
# default set took 13 min 32 s, against 21 min 36 s in one process. A single test: .venv/bin/python -m pytest PATH.
XDIST := -n auto --maxprocesses 4

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q $(XDIST)

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m "" $(XDIST)
