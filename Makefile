# Two commands on a fresh machine:  `make demo`  (the main job on Fashion-MNIST)  and  `make test`.
# Both create .venv, install torch==2.13.0 (CPU build) and unlearnkit into it, and set up what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.unlearnkit-installed
TEST_STAMP := $(VENV)/.unlearnkit-test-extras
DEMO_OUT ?= runs/demo

.PHONY: demo test lint install data text-data secrets clean bench-smoke

demo: $(STAMP) data
	$(BIN)/unlearnkit demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

test: $(TEST_STAMP)
	$(BIN)/python -m pytest tests

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "unlearnkit needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,hf]'
	@touch $(STAMP)

# The tests also need the optional extras the demo does not (Ray for the Ray backend's tests).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,hf,ray]'
	@touch $(TEST_STAMP)

data:
	@scripts/ensure-fashion-mnist.sh

text-data:
	@scripts/ensure-fortunes.sh

# Secrets in a language model (docs/text.md): the secrets suite, its report and plot.
secrets: $(STAMP) text-data
	$(BIN)/python benchmarks/lm_secrets.py

clean:
	rm -rf $(VENV) runs .pytest_cache
