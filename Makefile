# Everything runs from a project-local virtualenv so a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/certwatch.yaml

.PHONY: venv run check test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv  ## the daemon on the shipped inventory; open http://127.0.0.1:9795/
	$(VENV)/bin/certwatch run -c $(CONFIG)

check: venv  ## one-shot check of the shipped inventory (its demo endpoints include critical ones)
	@$(VENV)/bin/certwatch check -c $(CONFIG) || { code=$$?; \
	  echo "certwatch check exited $$code (0 ok, 1 warning, 2 critical or expired, 3 unknown)"; \
	  exit $$code; }

test: venv  ## the type check, then the whole suite
	$(PY) -m mypy
	$(PY) -m pytest

bench: venv
	$(PY) bench/sweep.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
