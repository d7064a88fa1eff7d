"""Dashboard benchmarks, measured side by side in one run and written to bench/dashboard/RESULTS.md:

1. attach: time from start until a finished 1,000,000-event run is on screen (RunView alone, and the whole
   Textual dashboard, headless).
2. bytes/s: what `rigtune watch` writes to an 80x24 terminal (a pty) while a run grows by 5 steps a second.
3. slowdown: the CPU demo trained alone and with `rigtune watch` attached, alternating, tokens/s compared.

Run: .venv/bin/python bench/dashboard/run.py [--quick]
"""
from __future__ import annotations

import asyncio
import datetime
import fcntl
import json
import os
import platform
import pty
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
PY = sys.executable


def make_run(run: Path, n: int):
    from runfixtures import write_run
    write_run(run, steps=0, total=n, state="finished", end=None)
    t = 1.7e9
    with open(run / "metrics.jsonl", "a") as f:
        for s in range(1, n + 1):
            t += 0.5
            f.write(json.dumps({"event": "step", "time": round(t, 3), "step": s, "epoch": round(s / 1000, 4),
                                "loss": round(3 / (1 + s / 1e4), 6), "lr": 2e-4, "grad_norm": 0.5, "tokens": 8192,
                                "trained_tokens": 4000, "tokens_per_s": 16384.0, "elapsed_s": round(s * 0.5, 2)}) + "\n")
            if s % 5000 == 0:
                f.write(json.dumps({"event": "checkpoint", "time": t, "step": s, "path": f"checkpoints/step-{s:06d}"}) + "\n")
        f.write(json.dumps({"event": "end", "time": t, "step": n, "reason": "finished", "message": "ok"}) + "\n")


def bench_attach(tmp: Path, n: int) -> dict:
    from engine.runview import RunView, downsample
    run = tmp / "big"
    make_run(run, n)
    size = (run / "metrics.jsonl").stat().st_size
    t = time.perf_counter()
    v = RunView(run)
    v.poll()
    downsample(v.steps, v.losses, 120)
    view_s = time.perf_counter() - t

    from runfixtures import FakeSampler
    from tui.app import RigtuneApp
    from tui.screens.dashboard import Dashboard

    async def attach():
        app = RigtuneApp(run_dir=run, sampler=FakeSampler())
        t0 = time.perf_counter()
        async with app.run_test(size=(80, 24)) as pilot:
            while not (isinstance(app.screen, Dashboard) and app.screen.attached):
                await pilot.pause(0.005)
            elapsed = time.perf_counter() - t0
            assert f"step {n}/{n}" in str(app.screen.query_one("#status").render())
            return elapsed
    app_s = asyncio.run(attach())
    return {"events": n, "bytes": size, "runview_s": view_s, "dashboard_s": app_s}


def run_in_pty(argv, cols=80, rows=24, env=None):
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env or os.environ)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return pid, fd


def drain(fd, seconds: float) -> int:
    total, end = 0, time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                total += len(os.read(fd, 65536))
            except OSError:
                break
    return total


def bench_bytes(tmp: Path, seconds: float) -> dict:
    from runfixtures import append_steps, write_run
    run = write_run(tmp / "live", steps=1, total=100000, state="training", pid=os.getpid())
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    pid, fd = run_in_pty([PY, "-m", "tui.cli", "watch", str(run)], env=env)
    drain(fd, 3.0)  # start-up and first paint
    step, start = 2, time.time()
    total = 0
    while time.time() - start < seconds:
        append_steps(run, step, step + 4, total=100000)
        with open(run / "train.log", "a") as f:
            f.write(f"[rigtune] step {step}\n")
        step += 5
        total += drain(fd, 1.0)
    rate = total / (time.time() - start)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return {"seconds": round(time.time() - start, 1), "bytes_per_s": rate, "steps_per_s": 5}


def demo_run(tmp: Path, name: str, watch: bool, steps: int) -> float:
    """Train the CPU demo preset for `steps` steps; return the trainer's mean tokens/s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp / f"{name}.toml"
    subprocess.run([PY, "-m", "tui.cli", "init", "--preset", "cpu-demo", "--name", name, "--out", str(out), "--force"],
                   cwd=tmp, env=env, check=True, capture_output=True)
    text = out.read_text().replace("max_steps = 0", f"max_steps = {steps}")
    text = text.replace("eval_every_steps = 20", "eval_every_steps = 0").replace("save_every_steps = 40", "save_every_steps = 0")
    out.write_text(text)
    proc = subprocess.Popen([PY, "-m", "tui.cli", "train", str(out), "--no-tui"], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watcher = None
    if watch:
        run = tmp / "runs" / name
        while not (run / "status.json").exists():
            time.sleep(0.05)
        watcher = run_in_pty([PY, "-m", "tui.cli", "watch", str(run)], env={**env, "TERM": "xterm-256color"})
    while proc.poll() is None:
        if watcher:
            drain(watcher[1], 0.2)
        else:
            time.sleep(0.2)
    if watcher:
        os.kill(watcher[0], 9)
        os.waitpid(watcher[0], 0)
    evs = [json.loads(l) for l in (tmp / "runs" / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rates = [e["tokens_per_s"] for e in evs if e["event"] == "step"][5:]  # skip warm-up steps
    return sum(rates) / len(rates)


def main():
    quick = "--quick" in sys.argv
    tmp = Path(tempfile.mkdtemp(prefix="rigtune-bench-"))
    try:
        attach = bench_attach(tmp, 100_000 if quick else 1_000_000)
        print("attach", attach, flush=True)
        bytes_ = bench_bytes(tmp, 10 if quick else 30)
        print("bytes", bytes_, flush=True)
        pairs = []
        for i in range(1 if quick else 2):
            alone = demo_run(tmp, f"alone{i}", False, 60 if quick else 150)
            watched = demo_run(tmp, f"watched{i}", True, 60 if quick else 150)
            pairs.append((alone, watched))
            print("slowdown", alone, watched, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    alone = sum(a for a, _ in pairs) / len(pairs)
    watched = sum(w for _, w in pairs) / len(pairs)
    lines = [
        "# Dashboard benchmarks", "",
        f"Measured {datetime.date.today()} on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}), all in one run of `bench/dashboard/run.py`{' --quick' if quick else ''}.", "",
        "| what | result |", "|---|---|",
        f"| attach to a finished run of {attach['events']:,} events ({attach['bytes'] / 2**20:.0f} MiB metrics.jsonl): run view | {attach['runview_s']:.2f} s |",
        f"| the same, whole dashboard until painted (headless Textual) | {attach['dashboard_s']:.2f} s |",
        f"| bytes written to an 80x24 terminal while a run grows 5 steps/s ({bytes_['seconds']:.0f} s) | {bytes_['bytes_per_s'] / 1024:.1f} KB/s |",
        f"| CPU demo trainer alone (mean tokens/s, {len(pairs)} run(s)) | {alone:,.0f} tok/s |",
        f"| CPU demo trainer with `rigtune watch` attached | {watched:,.0f} tok/s ({(watched - alone) / alone:+.1%}) |",
        "",
        "The watcher reads only the bytes metrics.jsonl gained (and status.json) twice a second; the runs",
        "alternate alone/watched so drift on this 2-core machine hits both alike. A difference within a few",
        "percent is within the run-to-run noise here.",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
