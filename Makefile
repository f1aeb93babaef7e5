# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv demo test test-slow test-all bench proto clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip<27"
	# torch first, alone and exact, so nothing later can swap in a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, sys; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert not torch.version.cuda, 'CUDA torch installed'"
	touch $(STAMP)

proto: venv
	$(BIN)/python -m service.codegen

demo: venv
	$(BIN)/naslung demo --out $(DEMO_DIR)

test: venv
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: venv
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# CPU benchmarks (minutes); GPU runs: bench/gpu/README.md. Figures go to docs/benchmarks.md by hand.
bench: venv
	$(BIN)/python bench/train_throughput.py --device cpu --models model1,naslung-ref --out runs/bench/train_throughput.json
	$(BIN)/python bench/augment_bench.py --device cpu --batch 32 64 --out runs/bench/augment.json
	$(BIN)/python bench/ensemble.py --device cpu --batches 1 8 32 --out runs/bench/ensemble.json
	$(BIN)/python bench/service.py --concurrency 1,4 --max-batch 8 --duration 10 --out runs/bench/service.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
