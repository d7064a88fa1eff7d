"""Fault tolerance: verified checkpoints, refused resumes, signals, a full disk, NaN losses, CUDA OOM (through
the RIGTUNE_FAULT seam) and one trainer per run directory. Each test looks at what is left on disk."""
import json
import os
import re
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from conftest import DEMO, ROOT, events, rigtune, run_file
from engine import runfile
from engine.events import EventLog, read_events, read_status


def steps_of(evs):
    return [e for e in evs if e["event"] == "step"]


def train(rf, *extra, fault=None):
    env = {**os.environ, "RIGTUNE_FAULT": fault} if fault else None
    return rigtune("train", rf, "--no-tui", *extra, env=env)


def test_manifest_and_resume_skips_a_corrupt_checkpoint(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 4, "save_every_steps": 2, "eval_every_steps": 0,
                                                     "keep_checkpoints": 3})
    assert train(rf).returncode == 0
    run = tmp_path / "runs" / "t"
    manifest = json.loads((run / "checkpoints" / "step-000004" / "manifest.json").read_text())
    assert manifest["step"] == 4 and "adapter_model.safetensors" in manifest["files"]
    assert len(manifest["files"]["optimizer.safetensors"]["sha256"]) == 64
    assert manifest["shape"]["lora.r"] == 16 and len(manifest["dataset"]) == 64
    # damage the newest: resume must take step 2 and say why it skipped step 4
    opt = run / "checkpoints" / "step-000004" / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:-10])
    rf.write_text(rf.read_text().replace("max_steps = 4", "max_steps = 6"))
    res = train(rf, "--resume")
    assert res.returncode == 0, res.stderr
    start = [e for e in events(run) if e["event"] == "start"][-1]
    assert start["resumed_from"].endswith("step-000002")
    assert "step-000004: optimizer.safetensors is" in start["skipped_checkpoints"][0]
    assert "skipped checkpoint step-000004" in (run / "train.log").read_text()


def test_resume_refuses_changed_data_or_shape(tmp_path, tiny_model):
    data = tmp_path / "d.jsonl"
    data.write_text(DEMO.read_text())
    rf = run_file(tmp_path, tiny_model, data, train={"max_steps": 2, "save_every_steps": 2, "eval_every_steps": 0})
    assert train(rf).returncode == 0
    text = rf.read_text()
    rf.write_text(text.replace("r = 16", "r = 8").replace("max_steps = 2", "max_steps = 3"))
    res = train(rf, "--resume")
    assert res.returncode == 2 and "lora.r was 16, now 8" in res.stderr and "--allow-changes" in res.stderr
    rf.write_text(text.replace("max_steps = 2", "max_steps = 3"))
    data.write_text(DEMO.read_text() + json.dumps({"instruction": "new", "input": "", "output": "row"}) + "\n")
    res = train(rf, "--resume")
    assert res.returncode == 2 and "the dataset's content changed" in res.stderr
    assert "Traceback" not in res.stderr
    res = train(rf, "--resume", "--allow-changes")
    assert res.returncode == 0, res.stderr
    assert [e["step"] for e in steps_of(events(tmp_path / "runs" / "t"))] == [1, 2, 3]


def test_kill_during_a_save_leaves_no_bad_checkpoint(tmp_path, tiny_model):
    from engine import checkpoint as C
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 6, "save_every_steps": 2, "eval_every_steps": 0})
    res = train(rf, fault="killsave@4")
    assert res.returncode == 1  # no end event: the trainer died
    run = tmp_path / "runs" / "t"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [".tmp-step-000004", "step-000002"] and C.verify(run / "checkpoints" / "step-000002") is None
    assert read_status(run)["state"] == "crashed"
    assert train(rf, "--resume").returncode == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    assert sorted({e["step"] for e in steps_of(events(run))}) == [1, 2, 3, 4, 5, 6]


def test_a_kill_while_deleting_an_old_checkpoint_leaves_no_torn_one(tmp_path, monkeypatch):
    """Pruning to keep_checkpoints deletes file by file; a kill in the middle must not leave a step-*
    directory that fails verification (a CI run caught this: README.md gone, manifest still there)."""
    import shutil

    from engine import checkpoint as C
    root = tmp_path / "checkpoints"
    old = root / "step-000003"
    old.mkdir(parents=True)
    for name in ("README.md", "adapter_model.safetensors", "manifest.json"):
        (old / name).write_text(name)

    def killed_halfway(path, ignore_errors=False):
        next(iter(sorted(Path(path).iterdir()))).unlink()
        raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs
    monkeypatch.setattr(shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        C.remove(old)
    monkeypatch.undo()
    assert C.complete(tmp_path) == []  # the torn directory is no longer a step-*
    assert C.clean_temp(tmp_path) == [".tmp-delete-step-000003"] and list(root.iterdir()) == []


def test_torn_event_line_is_skipped_and_next_writer_starts_fresh(tmp_path):
    log = EventLog(tmp_path)
    log.write("step", step=1, loss=1.0)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "step", "step": 2, "lo')  # a writer killed mid-line
    evs, offset = read_events(tmp_path)
    assert [e["step"] for e in evs] == [1]
    log = EventLog(tmp_path)
    log.write("step", step=2, loss=0.5)
    evs, _ = read_events(tmp_path)
    assert [e["step"] for e in evs] == [1, 2]


def test_stale_status_reads_as_crashed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "status.json").write_text(json.dumps({"state": "training", "pid": dead.pid, "pgid": dead.pid}))
    assert read_status(tmp_path)["state"] == "crashed"
    (tmp_path / "status.json").write_text(json.dumps({"state": "training", "pid": os.getpid()}))
    assert read_status(tmp_path)["state"] == "training"


def test_second_signal_aborts_but_one_repeated_at_once_does_not():
    code = """
import os, signal, time
from engine.torchside.process import StopFlag, Aborted
flag = StopFlag()
os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGTERM)  # torchrun's echo: still one stop
assert flag.requested
time.sleep(2.2)
try:
    os.kill(os.getpid(), signal.SIGHUP); time.sleep(0.1)
except Aborted as e:
    print("aborted:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "aborted: aborted by a second SIGHUP" in out.stdout


def test_sighup_to_the_trainer_stops_gracefully(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 500, "save_every_steps": 0, "eval_every_steps": 0})
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "t"
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and steps_of(events(run))):
        time.sleep(0.1)
    os.kill(json.loads((run / "status.json").read_text())["pid"], signal.SIGHUP)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    end = events(run)[-1]
    assert end["reason"] == "stopped" and (run / "checkpoints" / f"step-{end['step']:06d}").is_dir()


def test_disk_full_keeps_the_last_good_checkpoint(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 6, "save_every_steps": 2, "eval_every_steps": 0})
    res = train(rf, fault="enospc@4")
    assert res.returncode == 1 and "disk full" in res.stderr and "Traceback" not in res.stderr
    run = tmp_path / "runs" / "t"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # no half-written temp dir
    end = events(run)[-1]
    assert end["reason"] == "error" and "disk full while saving checkpoint step 4" in end["message"]
    assert "Traceback" not in (run / "train.log").read_text()
    assert train(rf, "--resume").returncode == 0  # space is back: it continues
    assert sorted(e["step"] for e in steps_of(events(run)))[-1] == 6


def _blocks(folder: Path) -> int:
    """Bytes a folder takes on a filesystem of 4 KiB pages (tmpfs), file by file."""
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in folder.rglob("*") if f.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB filesystem (tmpfs, as root); skipped with the reason where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_disk_that_fills_mid_run(tmp_path, tiny_model, small_disk):
    """Not through the seam: the run directory is on a small real filesystem whose free space holds two and a
    half checkpoints, so the third save fails inside the writing library (safetensors or json). The run ends
    cleanly - one message, no traceback, no half-written folder, the last good checkpoint kept - and once the
    space is freed, --resume trains to the end."""
    settings = {"max_steps": 8, "save_every_steps": 2, "eval_every_steps": 0, "keep_checkpoints": 10}
    probe = run_file(tmp_path, tiny_model, DEMO, name="probe", train={**settings, "max_steps": 2})
    assert train(probe).returncode == 0
    ckpt = _blocks(tmp_path / "runs" / "probe" / "checkpoints" / "step-000002")
    rf = run_file(small_disk, tiny_model, DEMO, name="full", train=settings)
    st = os.statvfs(small_disk)
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - int(1.5 * ckpt) - 128 * 1024))
    res = train(rf)
    run = small_disk / "runs" / "full"
    log = (run / "train.log").read_text()
    assert res.returncode == 1, res.stdout + res.stderr
    failed = re.search(r"disk full while saving checkpoint step (\d+) in (\S+) \(\d+ MiB free\);", res.stderr)
    assert failed and failed.group(2) == str(run / "checkpoints"), res.stderr
    at = int(failed.group(1))
    assert 2 < at < 8  # mid-run: at least one checkpoint fitted, the run did not get to its end
    assert "Traceback" not in res.stderr and "Traceback" not in log and "disk full" in log
    kept = [f"step-{s:06d}" for s in range(2, at, 2)]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == kept  # no half-written folder
    end = events(run)[-1]
    assert end["event"] == "end" and end["reason"] == "error" and end["message"].startswith("disk full")
    ballast.unlink()  # space is back: it continues from the last good checkpoint to the end
    res = train(rf, "--resume")
    assert res.returncode == 0, res.stdout + res.stderr
    evs = events(run)
    assert [e["resumed_from"] for e in evs if e["event"] == "start"][-1].endswith(kept[-1])
    assert max(e["step"] for e in steps_of(evs)) == 8 and (run / "adapter" / "adapter_model.safetensors").exists()


def test_nan_loss_stops_without_saving_it(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 6, "save_every_steps": 2, "eval_every_steps": 0})
    res = train(rf, fault="nan@3")
    assert res.returncode == 1
    run = tmp_path / "runs" / "t"
    end = events(run)[-1]
    assert end["reason"] == "error" and "NaN/inf at step 3" in end["message"] and "learning_rate" in end["message"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]


def test_bad_steps_are_skipped_up_to_the_limit(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 5, "max_bad_steps": 2, "eval_every_steps": 0})
    res = train(rf, fault="nan@3")
    assert res.returncode == 0, res.stderr
    steps = steps_of(events(tmp_path / "runs" / "t"))
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5] and steps[2].get("skipped") is True


def test_cuda_oom_without_fallback_gives_advice(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 4, "eval_every_steps": 0, "micro_batch_size": 2})
    res = train(rf, fault="oom@3")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    end = events(tmp_path / "runs" / "t")[-1]
    assert "out of memory at step 3" in end["message"]
    assert "Try all of: train." in end["message"] and "a quarter less than this run's" in end["message"]


def test_cuda_oom_fallback_keeps_the_effective_batch_and_the_losses(tmp_path, tiny_model):
    common = {"max_steps": 6, "save_every_steps": 2, "eval_every_steps": 0, "micro_batch_size": 2,
              "gradient_accumulation_steps": 1}
    no_dropout = {"dropout": 0.0}  # dropout masks would differ with the micro-batch's shape
    ref = run_file(tmp_path, tiny_model, DEMO, name="ref", train=common, lora=no_dropout)
    assert train(ref).returncode == 0
    ref_loss = {e["step"]: e["loss"] for e in steps_of(events(tmp_path / "runs" / "ref"))}
    rf = run_file(tmp_path, tiny_model, DEMO, train={**common, "oom_fallback": True}, lora=no_dropout)
    res = train(rf, fault="oom@4")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "t"
    evs = events(run)
    (fb,) = [e for e in evs if e["event"] == "oom_fallback"]
    assert fb["micro_batch_size"] == [2, 1] and fb["gradient_accumulation_steps"] == [1, 2] and fb["step"] == 2
    text = (run / "run.toml").read_text()
    assert "micro_batch_size = 1" in text and "gradient_accumulation_steps = 2" in text
    assert "history: out of memory at micro_batch_size 2" in text
    final = {}
    for e in steps_of(evs):
        final[e["step"]] = e["loss"]
    assert sorted(final) == [1, 2, 3, 4, 5, 6]
    for step, loss in ref_loss.items():  # same rows per step, so the same losses
        assert final[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step


def test_one_trainer_per_run_directory(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 500, "save_every_steps": 0, "eval_every_steps": 0})
    proc = subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "t"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and steps_of(events(run))):
            time.sleep(0.1)
        pid = json.loads((run / "status.json").read_text())["pid"]
        res = rigtune("train", rf, "--no-tui", "--resume")
        assert res.returncode == 2 and f"pid {pid}" in res.stderr
        # even going around the CLI, the trainer's lock refuses a second one
        direct = subprocess.run([sys.executable, "-m", "engine.torchside.trainer", str(run), "--resume"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert direct.returncode == 2 and f"(pid {pid}) is already running" in direct.stderr
    finally:
        os.killpg(json.loads((run / "status.json").read_text())["pgid"], signal.SIGTERM)
        proc.communicate(timeout=120)


def test_a_full_disk_at_launch_is_one_sentence(tmp_path, tiny_model, small_disk):
    """`rigtune train` itself writes the run-file copy and status.json; on a full disk it says so, no traceback."""
    rf = run_file(tmp_path, tiny_model, DEMO, name="nospace", train={"max_steps": 2})
    values = runfile.load(rf).to_dict()
    values["output_root"] = str(small_disk / "runs")
    runfile.save(values, rf)
    (small_disk / "ballast").write_bytes(b"\0" * (os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize))
    res = train(rf)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.startswith("rigtune: disk full while writing ") and "Free some space" in res.stderr
