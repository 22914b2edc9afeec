# weir: everything a fresh machine needs goes through these targets.
PYTHON ?= python3
PIP_FLAGS ?= --quiet --disable-pip-version-check

.PHONY: install test unit lint demo broker-start broker-stop bench bench-ttft clean

install:  ## install weir and its test tools (Java 17 and Maven must be on PATH for the broker)
	$(PYTHON) -m pip install $(PIP_FLAGS) -e ".[dev]"

test: install  ## the CI command: starts its own Kafka broker, runs the whole suite
	$(PYTHON) -m pytest -q -p no:cacheprovider

unit: install  ## fast tests only (no broker)
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not kafka"

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

demo: install  ## local broker + worker + a batch of requests, then a clean stop
	weir demo --requests 20

broker-start: install
	weir broker start

broker-stop:
	weir broker stop

bench: install  ## linear-pipeline throughput and per-hop latency, beside a raw aiokafka loop
	$(PYTHON) benchmarks/linear.py

bench-ttft: install  ## time to first token through one streaming step, beside a direct call
	$(PYTHON) benchmarks/ttft.py --requests 200

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
