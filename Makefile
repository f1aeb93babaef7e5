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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
