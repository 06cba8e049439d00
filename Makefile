# make test: set up .venv (first run installs torch etc., a few minutes) and run lint + tests.
# make demo: the same set-up, then the embedded demo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo lint format bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/adntn demo

bench: $(STAMP)
	$(PY) benchmarks/bench_generators.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
