# Harmonia's two commands, `make demo` and `make test`, each set up everything they need
# from a fresh clone: a .venv with the pinned packages of requirements.lock, then run.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HARMONIA_ROOT := $(CURDIR)

.PHONY: setup system audiocraft demo test notebooks lint format bench bench-runtimes bench-calibration lock hooks clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Harmonia needs Python 3.11 or newer"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name harmonia --display-name "Harmonia (.venv)" > /dev/null
	$(BIN)/python -c "from harmonia.samples import warm_numba_cache; warm_numba_cache()"  # numba #10128
	$(BIN)/python -c "from harmonia.kernels import unavailable; unavailable('rows_linear')"  # built once, where g++ is
	@touch $@

# System packages the tests use, where missing: Debian's chromium (the browser test drives it),
# docker-compose (the container tests parse the compose files with it; no engine needed), and
# g++ and ninja (Harmonia's own CPU products compile on first use: harmonia/kernels).
SYSTEM_PACKAGES := chromium:chromium docker-compose:docker-compose g++:g++ ninja:ninja-build
system:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} > /dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing > /dev/null; fi

# audiocraft's engines (audiogen, magnet) run in a worker with an environment of its own:
# audiocraft 1.3.0 and its light dependencies at exact pins, reading torch from .venv (never a
# second torch). Made here, or on first use of an audiocraft model.
audiocraft: setup
	$(BIN)/python -c "from harmonia.engines.audiocraft import ensure_worker_env; print(ensure_worker_env())"

# The main job: generate a clip end to end (musicgen-small when the hub answers, else a tiny
# model), print where the artifact went, and draw its spectrogram.
demo: setup
	$(BIN)/harmonia demo

# `make test`: lint, then the default test set: every test not marked slow (about 600, about 10-11
# minutes on a 2-core Intel Xeon or AMD EPYC). With SLOW=1, or where CI is set (CI services set it;
# .ci/run does), the slow tests too (about 56 more: the notebooks, the browser, the pipeline, Ray, the
# README's sequences; about 21-23 minutes for all on a 2-core Intel Xeon).
ALL_TESTS := $(filter-out 0 false,$(SLOW) $(CI))
TEST_SET := $(if $(ALL_TESTS),,not slow and )not gpu and not real_weights
test: system setup   # system first: setup builds Harmonia's kernels with the g++ it installs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "$(TEST_SET)"   # two workers, a test file each (pytest-xdist)

# Run every notebook on the tiny models with papermill into outputs/notebooks/ (ignored).
notebooks: setup
	$(BIN)/harmonia notebooks run --tiny

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup
	$(BIN)/python benchmarks/bench_verify.py
	$(BIN)/python benchmarks/bench_generate.py

# Harmonia's int8/int4 products and steps against ONNX Runtime's and CTranslate2's (about 20 minutes).
bench-runtimes: setup
	$(BIN)/python benchmarks/bench_runtimes.py

# Each mode's calibrated step paths against every candidate, timed by whole decoding steps (about 15 minutes).
bench-calibration: setup
	$(BIN)/python benchmarks/bench_calibration.py

# Re-resolve requirements.in into requirements.lock and environment.yml.
lock:
	$(PYTHON) tools/lock.py

hooks: setup
	$(BIN)/pre-commit install
	$(BIN)/nbstripout --install --attributes .gitattributes

clean:
	rm -rf $(VENV) .venv-audiocraft .pytest_cache .ruff_cache
