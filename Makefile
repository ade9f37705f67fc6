# Everything runs from a project-local virtualenv so a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/certwatch.yaml

.PHONY: venv check test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

check: venv  ## one-shot check of the shipped inventory
	$(VENV)/bin/certwatch check -c $(CONFIG)

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) bench/sweep.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
