# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv demo nni-search test test-slow test-remote test-all bench proto clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip<27"
	# torch first, alone and exact, so nothing later can swap in a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, sys; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert not torch.version.cuda, 'CUDA torch installed'"
	touch $(STAMP)

proto: venv
	$(BIN)/python -m service.codegen

demo: venv
	$(BIN)/naslung demo --out $(DEMO_DIR)

# NNI's own tool on the CPU-sized example (examples/search.yml): prepares runs/data when missing, then
# `nnictl create` with the security warning; stop it with `.venv/bin/nnictl stop ID` (the ID it prints).
NNI_PORT ?= 8080
nni-search: venv
	test -f runs/data/dataset.json || $(BIN)/naslung prepare --source lidc-shapes --no-progress --out runs/data
	$(BIN)/python -m search_spaces.nnictl create --config examples/search.yml --port $(NNI_PORT)

test: venv
	$(BIN)/python -m pytest -q -m "not slow and not remote" $(PYTEST_ARGS)

test-slow: venv
	$(BIN)/python -m pytest -q -m "slow and not remote" $(PYTEST_ARGS)

# NNI's remote (SSH) training service for real: a throwaway sshd on 127.0.0.1 (docs/scale-out.md).
# Needs OpenSSH (apt-get install -y openssh-server); here a missing sshd fails instead of skipping.
test-remote: venv
	NASLUNG_REQUIRE_SSHD=1 $(BIN)/python -m pytest -q -m remote $(PYTEST_ARGS)

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
