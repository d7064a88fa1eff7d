"""The dashboard's hardware sampler through the real psutil path on this machine (a live process group), and
what it says when NVML does not start. The GPU path is exercised through hand-made NVML profiles."""
import os
import subprocess
import sys
import time

from conftest import PROFILES
from engine.fakenvml import FakeNvml
from engine.sampler import Sampler
from runfixtures import write_run
from tui.app import RigtuneApp

BUSY = """
import time
x = bytearray(200 * 2**20)
for i in range(0, len(x), 4096):
    x[i] = 1
end = time.time() + 60
while time.time() < end:
    pass
"""


def test_the_real_cpu_sampler_reads_a_live_process_group():
    child = subprocess.Popen([sys.executable, "-c", BUSY], start_new_session=True)
    try:
        sampler = Sampler(lambda: child.pid, nvml=FakeNvml(PROFILES / "no-gpu.json"))
        deadline = time.time() + 20
        snap = sampler.sample_once()  # primes psutil's cpu_percent
        while time.time() < deadline:
            time.sleep(0.5)
            snap = sampler.sample_once()
            if snap.cpu.rss_gib > 0.19 and snap.cpu.cpu_percent > 0:
                break
        assert snap.gpus == () and snap.error is None
        assert "NVML did not start (NVML Shared Library Not Found)" in snap.note
        assert snap.cpu.processes == 1                       # the group is the child alone
        assert 0.19 < snap.cpu.rss_gib < 1.0                 # its 200 MiB, touched
        assert snap.cpu.cpu_percent > 30 / (os.cpu_count() or 1)  # one busy core, as a share of all of them
        assert 0 < snap.cpu.ram_used_gib < snap.cpu.ram_total_gib
    finally:
        child.kill()
        child.wait()
    assert sampler.sample_once().cpu.processes == 0  # the group is gone


def test_the_sampler_thread_swaps_in_snapshots():
    sampler = Sampler(lambda: os.getpgid(0), nvml=FakeNvml(PROFILES / "rtx4090.json"), interval=0.05).start()
    try:
        deadline = time.time() + 10
        while sampler.latest.time == 0.0 and time.time() < deadline:
            time.sleep(0.05)
        snap = sampler.latest
        assert snap.note is None and [g.name for g in snap.gpus] == ["RTX 4090"] and snap.cpu.processes >= 1
    finally:
        sampler.stop()


async def test_the_dashboard_says_why_it_shows_no_gpu(tmp_path):
    run = write_run(tmp_path / "r", steps=3, total=10, state="finished", end="finished")
    sampler = Sampler(lambda: None, nvml=FakeNvml(PROFILES / "no-gpu.json"))
    sampler.sample_once()
    app = RigtuneApp(run_dir=run, sampler=sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(100):
            await pilot.pause(0.02)
            if "NVML" in str(app.screen.query_one("#hardware").render()):
                break
        hw = str(app.screen.query_one("#hardware").render())
        assert "CPU" in hw and "no GPU figures: NVML did not start" in hw
