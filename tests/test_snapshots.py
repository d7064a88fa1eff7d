"""Deterministic screenshots of each screen at 80x24 and 120x40 (fixed run data, fixed hardware sample, UTC).
Update after an intended change with: .venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update"""
import os
import time

import pytest

from engine.demo import DEMO_MODEL_VERSION

from runfixtures import FakeSampler, write_run
from tui.app import RigtuneApp
from tui.screens.dashboard import Dashboard

os.environ["TZ"] = "UTC"
time.tzset()
SIZES = [(80, 24), (120, 40)]


async def wait_attached(pilot):
    for _ in range(200):
        await pilot.pause(0.02)
        if isinstance(pilot.app.screen, Dashboard) and pilot.app.screen.attached:
            await pilot.pause(0.05)
            return
    raise AssertionError("dashboard never attached")


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_finished(snap_compare, tmp_path, size):
    run = write_run(tmp_path / "demo", steps=40, total=40, state="finished", end="finished")
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    assert snap_compare(app, terminal_size=size, run_before=wait_attached)


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_finished_with_a_held_out_check(snap_compare, tmp_path, size):
    """The CPU demo's end: the Sample tab opens by itself, each held-out question with the base model's answer
    beside the fine-tune's."""
    run = write_run(tmp_path / "demo", steps=40, total=40, state="finished", end="finished", held_out=True)
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    assert snap_compare(app, terminal_size=size, run_before=wait_attached)


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_finished_with_energy(snap_compare, tmp_path, size):
    """A metered GPU run's end: its energy and cost, and the same tokens on a rented card, under tokens seen."""
    run = write_run(tmp_path / "demo", steps=40, total=40, state="finished", end="finished", energy=True)
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    assert snap_compare(app, terminal_size=size, run_before=wait_attached)


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_crashed_cpu(snap_compare, tmp_path, size):
    run = write_run(tmp_path / "demo", steps=17, total=40, state="training", pid=999999)
    app = RigtuneApp(run_dir=run, sampler=FakeSampler(gpus=False))
    assert snap_compare(app, terminal_size=size, run_before=wait_attached)


@pytest.mark.parametrize("size", SIZES)
def test_run_picker(snap_compare, tmp_path, monkeypatch, size):
    write_run(tmp_path / "runs" / "alpha", steps=10, total=10, state="finished", end="finished")
    monkeypatch.chdir(tmp_path)
    app = RigtuneApp(pick_from="runs", sampler=FakeSampler())
    assert snap_compare(app, terminal_size=size)


# ---------------------------------------------------------------------------- wizard screens

from test_wizard import RecordingLauncher, fixed_machine  # noqa: E402


@pytest.fixture
def wizard_home(tmp_path, monkeypatch):
    import shutil

    import presets
    monkeypatch.chdir(tmp_path)
    (tmp_path / "presets").mkdir()
    shutil.copy(presets.DEMO_DATA, tmp_path / "presets" / "demo.jsonl")
    monkeypatch.setattr(presets, "DEMO_DATA", presets.Path("presets/demo.jsonl"))
    (tmp_path / "cache" / f"tiny-demo-v{DEMO_MODEL_VERSION}").mkdir(parents=True)
    (tmp_path / "cache" / f"tiny-demo-v{DEMO_MODEL_VERSION}" / "rigtune-tiny.json").write_text("{}")
    monkeypatch.setenv("RIGTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def walk(*keys, settle=0.4):
    async def run_before(pilot):
        from textual.widgets import Input
        await pilot.pause(0.3)
        for k in keys:
            await pilot.press(k)
            await pilot.pause(0.15)
        await pilot.pause(settle)  # the dataset preview worker
        for inp in pilot.app.screen.query(Input):  # a blinking cursor would make the picture depend on timing
            inp.cursor_blink = False
        await pilot.pause(0.05)
    return run_before


STEPS = {"scan": (), "tier": ("enter",), "setup": ("enter", "enter"), "review": ("enter", "enter", "enter"),
         "launch": ("enter", "enter", "enter", "enter")}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("step", list(STEPS))
def test_wizard_cpu_demo(snap_compare, wizard_home, step, size):
    app = RigtuneApp(wizard=True, machine=fixed_machine(), launcher=RecordingLauncher())
    assert snap_compare(app, terminal_size=size, run_before=walk(*STEPS[step]))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("step", ["tier", "setup"])
def test_wizard_dual_3090(snap_compare, wizard_home, step, size):
    app = RigtuneApp(wizard=True, machine=fixed_machine("dual3090-nvlink"), launcher=RecordingLauncher())
    keys = STEPS[step] if step == "tier" else ("enter", "left", "enter")
    assert snap_compare(app, terminal_size=size, run_before=walk(*keys))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("keys", [("enter", "left"), ("enter", "left", "b")], ids=["pane", "bill"])
def test_wizard_what_to_buy(snap_compare, wizard_home, keys, size):
    """One RTX 4090 with 62.7 GB of RAM: the tier step's "what to buy" line for the $3,000 tier, and `b`'s bill."""
    app = RigtuneApp(wizard=True, machine=fixed_machine("rtx4090"), launcher=RecordingLauncher())
    assert snap_compare(app, terminal_size=size, run_before=walk(*keys))
