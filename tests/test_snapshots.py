"""Deterministic screenshots of each screen at 80x24 and 120x40 (fixed run data, fixed hardware sample, UTC).
Update after an intended change with: .venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update"""
import os
import time

import pytest

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
