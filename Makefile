# One-command entry points; each installs what it needs into .venv/ first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mrla_mm-installed
# Re-install when the pins, the packaging or the compiled ops change.
INSTALL_DEPS := setup.py tools/misc/setup_env.sh $(wildcard requirements/*.txt) \
	$(shell find mrla_mm/ops/csrc -type f 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: install test demo lint format clean

install: $(STAMP)

$(STAMP): $(INSTALL_DEPS)
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/misc/setup_env.sh
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) tools/misc/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff check --fix .

clean:
	rm -rf build *.egg-info work_dirs .pytest_cache .ruff_cache
