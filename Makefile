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
# pytest-xdist runs the suite on both cores (most tests train in a one-thread subprocess); tests that share the
# trained demo run are one xdist_group, so it is trained once. The snapshot tests run apart, without xdist, so
# that syrupy's report (which also catches snapshots no test uses any more) is kept; the faked-GPU run compares
# them again under xdist, where each worker still fails on a changed screen.
XDIST := -n 2 --dist loadgroup
test: install
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q $(XDIST) --ignore=tests/test_snapshots.py
	$(PY) -m pytest -q tests/test_snapshots.py
	RIGTUNE_FAKE_NVML=$(CURDIR)/tests/profiles/rtx4090.json $(PY) -m pytest -q $(XDIST) $(MACHINE_TESTS)

clean:
	rm -rf $(VENV) runs .pytest_cache .import_linter_cache
