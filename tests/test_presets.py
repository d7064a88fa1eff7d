"""`rigtune init --preset` writes run files the planner made fit, and they pass `rigtune check`."""
import pytest

from conftest import machine_env, rigtune
from engine import runfile


@pytest.mark.parametrize("preset, strategy, offload, procs", [("1500", "single", False, 1), ("3000", "fsdp", True, 2)])
def test_tier_presets_pass_check(tmp_path, preset, strategy, offload, procs):
    out = tmp_path / f"{preset}.toml"
    res = rigtune("init", "--preset", preset, "--out", out)
    assert res.returncode == 0, res.stderr
    cfg = runfile.load(out)
    assert cfg.hardware.strategy == strategy and cfg.hardware.cpu_offload is offload
    assert cfg.hardware.num_processes == procs and cfg.hardware.tier == preset
    text = out.read_text()
    assert "planned:" in text and "GiB per GPU" in text  # the comments say why
    check = rigtune("check", out)
    assert check.returncode == 0, check.stderr
    plan = rigtune("plan", out)
    assert "FITS" in plan.stdout and "DOES NOT FIT" not in plan.stdout


def test_tier_preset_with_another_model(tmp_path):
    out = tmp_path / "q.toml"
    assert rigtune("init", "--preset", "1500", "--model", "Qwen2.5-14B", "--out", out).returncode == 0
    cfg = runfile.load(out)
    assert cfg.model.base == "Qwen/Qwen2.5-14B"


def test_gpu_run_file_is_refused_on_a_machine_without_those_gpus(tmp_path):
    out = tmp_path / "3000.toml"
    rigtune("init", "--preset", "3000", "--out", out)
    res = rigtune("train", out, "--no-tui", env=machine_env("no-gpu"))
    assert res.returncode == 2 and "gpus = [0, 1]" in res.stderr and "no NVIDIA GPU" in res.stderr
    assert "Traceback" not in res.stderr


def test_this_machine_preset_needs_a_gpu(tmp_path):
    res = rigtune("init", "--preset", "this-machine", "--out", tmp_path / "x.toml", env=machine_env("no-gpu"))
    assert res.returncode == 2 and "no NVIDIA GPU" in res.stderr


def test_this_machine_preset_on_a_gpu_box(tmp_path):
    out = tmp_path / "x.toml"
    res = rigtune("init", "--preset", "this-machine", "--out", out, env=machine_env("rtx4090"))
    assert res.returncode == 0, res.stderr
    cfg = runfile.load(out)
    assert cfg.hardware.tier == "this-machine" and cfg.hardware.gpus == [0]
