# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the local virtualenv .venv and installs the project into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/statex demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/cpu_mixers.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
