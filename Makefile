# stepcare: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Downloads (Kafka jars, the schema registry, Maven repository) are cached here; git ignores it.
export STEPCARE_CACHE_DIR ?= $(CURDIR)/.cache

.PHONY: venv jars lint typecheck format test test-faults test-unit hostile run bench broker-start broker-stop registry-start registry-stop clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "stepcare needs Python 3.11, not " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

jars: venv  ## the broker jars of every supported Kafka line, the schema registry and HAPI FHIR's validator (no download once cached)
	$(BIN)/stepcare broker fetch --all
	$(BIN)/stepcare registry fetch
	$(BIN)/stepcare fhir-validator fetch

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv  ## mypy, strict, on the packages [tool.mypy] lists (pyproject.toml)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint typecheck jars  ## ruff, mypy, then the whole suite on real brokers
	$(BIN)/pytest --durations=15

test-faults: lint jars  ## the full fault-injection run (~20,000 events, 4 kills, a broker SIGKILL; ~5 min)
	STEPCARE_FAULTS=full $(BIN)/pytest -s tests/integration/test_faults.py

hostile: venv jars  ## the hostile-input suite: every attack and what stepcare does (a table at the end)
	$(BIN)/pytest -m attack

test-unit: venv  ## the tests that need no broker
	$(BIN)/pytest -m "not integration"

run: venv jars  ## broker, topics, worker, a demo cohort; escalations as they arrive; Ctrl-C stops all
	$(BIN)/stepcare demo run

# The Quix Streams peer pins confluent-kafka < 2.13, so it has a venv of its own (bench only).
BENCH_VENV := .bench-venv
$(BENCH_VENV)/.installed:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet quixstreams==3.28.1 orjson==3.13.0 fastavro==1.13.1 avro==1.12.2 rocksdict==0.3.29
	@touch $@

bench: venv jars $(BENCH_VENV)/.installed  ## benchmarks (not tests): writes docs/benchmarks.md (~6-8 min; --profile needs py-spy)
	$(BIN)/python bench/run_all.py

broker-start: venv
	$(BIN)/stepcare broker start

broker-stop: venv
	$(BIN)/stepcare broker stop

registry-start: venv  ## a schema registry (Apicurio, Confluent-compatible API) on 127.0.0.1:8081
	$(BIN)/stepcare registry start

registry-stop: venv
	$(BIN)/stepcare registry stop

clean:
	-$(BIN)/stepcare broker stop
	-$(BIN)/stepcare registry stop
	rm -rf .run .pytest_cache .ruff_cache
