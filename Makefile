# Quick start: `make run` (sets up, then opens rigtune) and `make test` (sets up, then runs the suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first, at a version known to work. Plain pip takes the CUDA build on a Linux GPU box
# and the CPU build where that is what the index offers; override with `make TORCH_VERSION=...`.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.rigtune-installed

.PHONY: install run test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e '.[test]'
	if nvidia-smi -L >/dev/null 2>&1; then $(PY) -m pip install --quiet -e '.[test,gpu]'; fi
	touch $(STAMP)

run: install
	$(VENV)/bin/rigtune

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
