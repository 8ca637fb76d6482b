# Fresh machine: `make run` (main job, offline, bundled data) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: install run test test-all bench clean

$(STAMP): pyproject.toml requirements-machine.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-machine.txt
	$(BIN)/pip install -q -e '.[test,flower,privacy]'
	touch $(STAMP)

install: $(STAMP)

## The main job: PSFL on the bundled Fashion-MNIST sample, cpu presets (<= 5 min on 2 cores).
run: $(STAMP)
	$(BIN)/psfl run

## The test suite (slow tests excluded; `make test-all` runs them too), on TEST_WORKERS
## pytest-xdist workers: one per core here, and one more to fill the cores while the
## Flower tests wait (tests/conftest.py: the order, the threads per worker, the groups).
TEST_WORKERS ?= 3
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -m ''

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
