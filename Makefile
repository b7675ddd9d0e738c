# Two commands do all set-up on a fresh machine with only Python 3.11:
#   make demo   the deploy DAG on the embedded default, ending with a live prediction
#   make test   the test suite (starts Docker and Azurite itself)
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo demo-docker test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scoring/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ./scoring -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Uses the locally built base and gateway images (scripts/base-image.sh), as nothing is pulled here;
# set MLOPS_BASE_IMAGE / MLOPS_GATEWAY_IMAGE to use others (the product defaults are public images).
demo-docker: $(STAMP)
	scripts/test-setup.sh docker
	MLOPS_BASE_IMAGE=$${MLOPS_BASE_IMAGE:-airflow-mlops/base:bookworm} \
	MLOPS_GATEWAY_IMAGE=$${MLOPS_GATEWAY_IMAGE:-airflow-mlops/haproxy:bookworm} \
	$(PY) scripts/demo.py --target docker

test: $(STAMP)
	scripts/test-setup.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy scoring/mlops_scoring airflow_mlops/hooks

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf .demo .bench .pytest_cache
