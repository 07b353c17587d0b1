# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# A CPU wheel of torch 2.13.0 lies on disk on our machines; an unpinned `torch`
# pulls a multi-GB CUDA build instead. Elsewhere PyPI's Linux wheel of the same pin is
# the CUDA build too: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# takes the CPU one.
TORCH  ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: demo test lint bench-prepare bench-large bench-train bench-serve evidence evidence-quick tune incremental clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev,serve,explain]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/seqtwins run

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

bench-prepare: $(STAMP)
	$(PY) benchmarks/bench_prepare.py

bench-large: $(STAMP)
	$(PY) benchmarks/bench_large.py

bench-train: $(STAMP)
	$(PY) benchmarks/bench_train.py

# /embed throughput and latency, ONNX Runtime vs torch, FAISS on 1M users (docs/serve.md)
bench-serve: $(STAMP)
	$(PY) benchmarks/bench_serve.py

# The evidence study (docs/evidence.md) reads the real datasets from $SEQTWINS_DATA,
# ../shared/data unless set. (Only these targets: `make test` skips real-data tests when
# SEQTWINS_DATA is unset.)
evidence evidence-quick tune incremental: export SEQTWINS_DATA ?= $(abspath ../shared/data)

evidence: $(STAMP)
	$(PY) benchmarks/evidence.py

evidence-quick: $(STAMP)
	$(PY) benchmarks/evidence.py --quick

# Optuna search that writes configs/tuned/*.yaml: the same budget for every objective of
# each experiment among barlow, dual, barlow+next and barlow+mask: 24 complete trials each
# (pruned/failed ones are made up), 20 epochs per trial, no pruning before epoch 8 (40 %).
tune: $(STAMP)
	$(PY) benchmarks/evidence.py --tune ml-1m yelp beauty lastfm --trials 24 --tune-epochs 20

# The incremental-pretraining study (docs/incremental.md): three time windows of two synthetic
# logs with planted drift (one with retired categories), ml-latest-small and ML-1M; every
# strategy against forgetting.
incremental: $(STAMP)
	$(PY) benchmarks/incremental.py

clean:
	rm -rf $(VENV) out runs .pytest_cache .mypy_cache .ruff_cache
