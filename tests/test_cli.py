"""The command line's contracts: fast help without torch, and engine/ never importing the terminal UI."""
import os
import subprocess
import sys

from conftest import ROOT, peer, rigtune, run_file


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_help_does_not_import_torch():
    mods = _modules_after("from tui.cli import build_parser\ntry:\n build_parser().parse_args(['--help'])\n"
                          "except SystemExit:\n pass")
    assert "torch" not in mods and "transformers" not in mods
    res = rigtune("--help")
    assert res.returncode == 0 and "rigtune train RUN_FILE" in res.stdout


def test_engine_never_imports_textual():
    code = ("import engine.runfile, engine.data, engine.events, engine.launch, engine.demo, engine.torchside.model, "
            "engine.torchside.trainer, engine.torchside.tiny")
    mods = _modules_after(code)
    assert not any(m == "textual" or m.startswith("textual.") or m.startswith("tui") for m in mods)
    for path in (ROOT / "engine").glob("*.py"):
        assert "textual" not in path.read_text() and "from tui" not in path.read_text(), path


def test_check_names_each_peer_format(tmp_path, tiny_model):
    for name, fmt in [("alpaca_en_demo.json", "alpaca"), ("glaive_toolcall_en_demo.json", "sharegpt"),
                      ("c4_demo.jsonl", "text"), ("v1_sft_demo.jsonl", "messages")]:
        rf = run_file(tmp_path, tiny_model, peer(name), name=fmt)
        res = rigtune("check", rf)
        assert res.returncode == 0, res.stderr
        assert f"format: {fmt}" in res.stdout and "truncated" in res.stdout


def test_trust_remote_code_warns(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, peer("identity.json"), model={"base": str(tiny_model),
                                                                      "trust_remote_code": True})
    res = rigtune("check", rf)
    assert res.returncode == 0 and "trust_remote_code" in res.stderr


def test_the_wizard_never_imports_torch(tmp_path):
    """The whole wizard, scan to launch step, on faked dual-3090 hardware, in a fresh process: torch and
    transformers are never imported (the planner, the preview and the run-file checks are plain Python)."""
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT / 'tests')!r})
from test_wizard import fixed_machine
from tui.app import RigtuneApp
from tui.screens import wizard as W

async def walk():
    app = RigtuneApp(wizard=True, machine=fixed_machine("dual3090-nvlink"))
    async with app.run_test(size=(120, 40)) as pilot:
        for screen in (W.ScanStep, W.TierStep, W.SetupStep, W.ReviewStep, W.LaunchStep):
            for _ in range(300):
                await pilot.pause(0.02)
                if isinstance(app.screen, screen):
                    break
            assert isinstance(app.screen, screen), (screen, app.screen)
            await pilot.pause(0.3)
            if screen is not W.LaunchStep:
                await pilot.press("enter")
asyncio.run(walk())
print("heavy:", sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes", "accelerate") if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "RIGTUNE_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "heavy: []" in res.stdout
    assert list((tmp_path / "runs").glob("*/run.toml"))  # the review step wrote the run file


def test_check_refuses_a_model_path_that_does_not_exist(tmp_path, tiny_model):
    """A path-looking model.base that is not there is refused before launch, naming the path and its line;
    so is text that cannot be a hub id. A hub id that is merely not downloaded is not refused."""
    data = peer("identity.json")
    for base, shown in [("/data/models/no-such-model", "/data/models/no-such-model"),
                        ("./no-such-model", str(tmp_path / "no-such-model")),
                        ("~/no-such-model", "no-such-model")]:
        rf = run_file(tmp_path, tiny_model, data, model={"base": base})
        for command in (("check", rf), ("train", rf, "--no-tui")):
            res = rigtune(*command, cwd=tmp_path)
            assert res.returncode == 2, (base, res.stdout, res.stderr)
            assert shown in res.stderr and "does not exist" in res.stderr and "model.base" in res.stderr
            assert "t.toml:" in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / "runs" / "t").exists()  # nothing was launched
    rf = run_file(tmp_path, tiny_model, data, model={"base": "org/name/extra"})
    res = rigtune("check", rf, cwd=tmp_path)
    assert res.returncode == 2 and "neither a local folder nor a Hugging Face id" in res.stderr
    rf = run_file(tmp_path, tiny_model, data, model={"base": "someone/not-downloaded-yet"})
    res = rigtune("check", rf, cwd=tmp_path)
    assert res.returncode == 0 and "not local" in res.stdout
