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

# Tests that read facts about the machine (scan, plan, presets, wizard, dashboard, CLI), run once more with
# a faked RTX 4090 visible: the suite must pass on the GPU boxes rigtune is for, not only on this CPU one.
MACHINE_TESTS := tests/test_scan.py tests/test_presets.py tests/test_planner.py tests/test_wizard.py \
	tests/test_layout.py tests/test_cli.py tests/test_runfile.py tests/test_snapshots.py tests/test_dashboard.py

# The layer contracts (pyproject.toml, [tool.importlinter]) first, then the suite, then the faked-GPU run.
test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q
	RIGTUNE_FAKE_NVML=$(CURDIR)/tests/profiles/rtx4090.json $(PY) -m pytest -q $(MACHINE_TESTS)

clean:
	rm -rf $(VENV) runs .pytest_cache .import_linter_cache
