# Two commands on a fresh machine with Python 3.11: `make sweep` and `make test`.
# Both create the virtual environment .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: sweep test lint mlflow-ui mlflow-ui-stop

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

sweep: $(VENV)/.installed
	$(PY) sweeps/run.py --space predictor_width

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Two pytest workers (pytest-xdist): one takes the tests marked `before_the_batch`, then
# those on the session's Ray cluster and its batch of shared sweeps (tests/conftest.py),
# the other every other test meanwhile; each computes on one thread (README, "Tests").
test: lint
	$(PY) -m pytest -n 2 --dist loadgroup

# The MLflow UI over the embedded store on http://127.0.0.1:5000 (MLFLOW_UI_PORT=... to
# change); mlflow/README.md says more. mlflow-ui-stop ends all the server's processes.
mlflow-ui: $(VENV)/.installed
	MLFLOW_UI_BIN=$(VENV)/bin/mlflow mlflow/serve.sh start

mlflow-ui-stop:
	mlflow/serve.sh stop
