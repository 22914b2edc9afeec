# weir: everything a fresh machine needs goes through these targets.
# Everything installs into this checkout's own venv (.venv), never the machine's interpreter:
# several clones on one machine must not overwrite each other's editable install.
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: install deps test unit lint demo broker-start broker-stop bench bench-linear bench-traces bench-ttft bench-redaction clean

$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)

install: $(PYTHON)  ## install weir and its test tools into .venv (Java 17 and Maven must be on PATH for the broker)
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

deps:  ## system packages the tests need: Debian's chromium for the dashboard test (as root)
	@command -v chromium >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: install deps  ## the CI command: starts its own Kafka broker, runs the whole suite
	$(PYTHON) -m pytest -q -p no:cacheprovider

unit: install deps  ## fast tests only (no broker)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not kafka"

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

demo: install  ## local broker + worker + a batch of requests, then a clean stop
	$(VENV)/bin/weir demo --requests 20

broker-start: install
	$(VENV)/bin/weir broker start

broker-stop:
	$(VENV)/bin/weir broker stop

bench: install  ## weir's worker beside a hand-written 3-hop aiokafka chain, as separate processes
	$(VENV)/bin/weir bench

bench-linear: install  ## the older in-process linear benchmark, beside a raw aiokafka loop
	$(PYTHON) benchmarks/linear.py

bench-traces: install  ## sink events/s into the embedded engine; tracing on vs off on the linear pipeline
	$(PYTHON) benchmarks/traces.py
bench-ttft: install  ## time to first token through one streaming step, beside a direct call
	$(PYTHON) benchmarks/ttft.py --requests 200
bench-redaction: install  ## redaction MB/s: the 600-string corpus, a 1 MB body, 8,000 e-mail addresses (no broker)
	$(PYTHON) benchmarks/redaction.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
