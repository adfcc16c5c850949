# helpdesk-milter — the commands CI and the README use verbatim.
#   make run    venv + install, then the milter on the example config (127.0.0.1:8894)
#   make test   Debian packages + venv, then ruff and the whole test suite
#   make test-compiled  the whole suite again on the mypyc-compiled core (what `pip install .` installs)
#   make lint   ruff (and mypy on the package)
#   make bench  performance, side by side through a real Postfix (not part of test)
#   make train  rebuild the request model from the labelled sets (models/request.json)
#   make fuzz   long fuzzing of parse -> decide -> rewrite (FUZZ_SECONDS, default 600)
#   make soak   20,000 messages through Postfix, kills, locks, 50 MB, Redis outages (not part of test)

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
RUN_DIR ?= run

.PHONY: all run test test-compiled compiled lint typecheck bench fuzz soak train system-deps venv clean

FUZZ_SECONDS ?= 600

all: test

system-deps:
	@scripts/install-system-deps.sh

# The development install stays pure Python (HELPDESK_MILTER_COMPILE=0): an edited .py
# file must never be shadowed by a stale compiled one (editable installs never compile).
$(VENV)/.installed: pyproject.toml setup.py
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	HELPDESK_MILTER_COMPILE=0 $(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: system-deps $(VENV)/.installed

run: venv
	@mkdir -p $(RUN_DIR)
	$(VENV)/bin/helpdesk-milter check-config --config config/helpdesk-milter.toml
	exec $(VENV)/bin/helpdesk-milter run --config config/helpdesk-milter.toml \
	    --database $(RUN_DIR)/state.db

lint: venv
	$(VENV)/bin/ruff check milter tests scripts
	$(VENV)/bin/mypy

typecheck: venv
	$(VENV)/bin/mypy

# pytest-xdist workers: each has its own Postfix, sink, milters, DNS and Redis servers
# (free loopback ports, its own temp dirs). `make test PYTEST_WORKERS=0`: one process.
PYTEST_WORKERS ?= 2

test: venv lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS)

# The decision core compiled with mypyc (setup.py's COMPILED modules): the wheel that
# `pip install .` builds by default (HELPDESK_MILTER_COMPILE unset, build isolation:
# pip fetches setuptools, wheel and mypy), unpacked into build/compiled.  The suite then
# runs on it (tests/test_compiled.py checks that the compiled modules are the ones loaded).
COMPILED_DIR = build/compiled
WHEEL_DIR    = build/wheel

compiled: venv
	rm -rf $(COMPILED_DIR) $(WHEEL_DIR) build/temp.* build/lib.* build/helpdesk_milter
	env -u HELPDESK_MILTER_COMPILE $(PY) -m pip wheel -q --disable-pip-version-check \
	    --no-deps -w $(WHEEL_DIR) .
	$(PY) -m zipfile -e $(WHEEL_DIR)/helpdesk_milter-*.whl $(COMPILED_DIR)
	@ls $(COMPILED_DIR)/helpdesk_milter/secrets.*.so > /dev/null || \
	    { echo "make compiled: the wheel holds no compiled module (is gcc installed?)"; exit 1; }

test-compiled: compiled
	HELPDESK_MILTER_EXPECT_COMPILED=1 PYTHONPATH=$(CURDIR)/$(COMPILED_DIR) \
	    $(PY) -m pytest -q -n $(PYTEST_WORKERS) -p no:cacheprovider

# The bench measures what `pip install .` installs: the compiled decision core
# (`make bench BENCH_CORE=pure`: the plain Python fallback, the development tree).
BENCH_CORE ?= compiled

BENCH_PATH = $(if $(filter compiled,$(BENCH_CORE)),$(CURDIR)/$(COMPILED_DIR))

bench: venv $(if $(BENCH_PATH),compiled)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(if $(BENCH_PATH),PYTHONPATH=$(BENCH_PATH)) $(PY) tests/bench/run.py

train: venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train]'
	$(PY) scripts/train-model.py $(TRAIN_ARGS)

fuzz: venv
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,fuzz]' || \
	    echo "atheris unavailable: fuzzing with hypothesis"
	$(PY) tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

soak: venv
	$(PY) tests/soak/run.py --scenario all
	$(PY) tests/soak/redis_outage.py --messages 1000 --fault kill
	$(PY) tests/soak/redis_outage.py --messages 1000 --fault pause

clean:
	rm -rf $(VENV) $(RUN_DIR) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
