"""End to end: `rigtune train --no-tui` launches accelerate, runs real NF4 QLoRA on a tiny local model, and
leaves a consistent run directory - after a normal end, a graceful stop, a kill -9 and resume, and with DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from engine import data as D
from engine import runfile
from conftest import DEMO, ROOT, events, rigtune, run_file, small_slice


def steps_of(evs):
    return [e for e in evs if e["event"] == "step"]


def test_train_alpaca_end_to_end(tmp_path, tiny_model):
    data = small_slice(tmp_path, "alpaca_en_demo.json", 60)
    rf = run_file(tmp_path, tiny_model, data, train={"max_steps": 8, "keep_checkpoints": 2})
    assert "format: alpaca" in rigtune("check", rf).stdout
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "step 8/8" in res.stdout and "Traceback" not in res.stderr
    run = tmp_path / "runs" / "t"
    evs = events(run)
    start = evs[0]
    assert start["event"] == "start" and start["world_size"] == 1 and start["total_steps"] == 8
    assert [e["step"] for e in steps_of(evs)] == list(range(1, 9))
    assert all(e["loss"] > 0 and e["tokens_per_s"] > 0 for e in steps_of(evs))
    assert [e["step"] for e in evs if e["event"] == "eval"] == [3, 6, 8]
    assert all(e["sample"]["prompt"] for e in evs if e["event"] == "eval")
    assert evs[-1]["event"] == "end" and evs[-1]["reason"] == "finished"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006", "step-000008"]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    # the adapter loads with peft onto the base
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "adapter")
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert lora and (run / "adapter" / "adapter_model.safetensors").exists()
    # a second train of the same run is refused rather than mixed into it
    again = rigtune("train", rf, "--no-tui")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_loss_falls(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 30, "eval_every_steps": 0, "save_every_steps": 0,
                                                     "micro_batch_size": 4})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr
    losses = [e["loss"] for e in steps_of(events(tmp_path / "runs" / "t"))]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5  # a random-init base: it falls, slowly


@pytest.mark.parametrize("name", ["glaive_toolcall_en_demo.json", "c4_demo.jsonl", "v1_sft_demo.jsonl"])
def test_peer_formats_train(tmp_path, tiny_model, name):
    data = small_slice(tmp_path, name, 24)
    rf = run_file(tmp_path, tiny_model, data, train={"max_steps": 2, "eval_every_steps": 0, "save_every_steps": 0})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr
    evs = events(tmp_path / "runs" / "t")
    assert len(steps_of(evs)) == 2 and evs[-1]["reason"] == "finished"


@pytest.mark.parametrize("optimizer, quantization, gc", [("adamw_8bit", "nf4", True), ("paged_adamw_8bit", "fp4", False),
                                                         ("adamw_torch", "none", True)])
def test_optimizers_and_bases_resume(tmp_path, tiny_model, optimizer, quantization, gc):
    """8-bit optimizer state goes through safetensors and comes back on resume; plain LoRA works too."""
    rf = run_file(tmp_path, tiny_model, DEMO, model={"base": str(tiny_model), "compute_dtype": "float32",
                                                     "quantization": quantization},
                  train={"max_steps": 2, "optimizer": optimizer, "gradient_checkpointing": gc,
                         "save_every_steps": 1, "eval_every_steps": 0})
    assert rigtune("train", rf, "--no-tui").returncode == 0
    text = rf.read_text().replace("max_steps = 2", "max_steps = 4")
    rf.write_text(text)
    res = rigtune("train", rf, "--no-tui", "--resume")
    assert res.returncode == 0, res.stderr
    evs = events(tmp_path / "runs" / "t")
    assert [e["step"] for e in steps_of(evs)] == [1, 2, 3, 4]
    assert evs[[i for i, e in enumerate(evs) if e["event"] == "start"][1]]["resumed_from"].endswith("step-000002")


def _start(rf, *extra):
    return subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui", *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(run, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and predicate(events(run)):
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the run")


def test_kill9_then_resume_logs_every_step_and_matches(tmp_path, tiny_model):
    common = dict(train={"max_steps": 10, "save_every_steps": 3, "eval_every_steps": 0, "micro_batch_size": 2})
    ref = run_file(tmp_path, tiny_model, DEMO, name="ref", **common)
    assert rigtune("train", ref, "--no-tui").returncode == 0
    ref_loss = {e["step"]: e["loss"] for e in steps_of(events(tmp_path / "runs" / "ref"))}

    rf = run_file(tmp_path, tiny_model, DEMO, name="k", **common)
    proc = _start(rf)
    run = tmp_path / "runs" / "k"
    _wait_for(run, lambda evs: any(e["event"] == "step" and e["step"] >= 7 for e in evs))
    pgid = json.loads((run / "status.json").read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=60)
    from engine import checkpoint as C
    for p in (run / "checkpoints").iterdir():  # a kill during a save leaves only a temp dir, never a bad step-*
        assert p.name.startswith(".tmp-") or (p.name.startswith("step-") and C.verify(p) is None), p.name
    res = rigtune("train", rf, "--no-tui", "--resume")
    assert res.returncode == 0, res.stderr
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]  # cleaned on start
    evs = events(run)
    logged = {e["step"]: e["loss"] for e in steps_of(evs)}
    assert sorted(logged) == list(range(1, 11))
    for step, loss in ref_loss.items():  # the resumed run continues the same data order and schedule
        assert logged[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step
    assert evs[-1]["reason"] == "finished"


def test_sigterm_stops_gracefully(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 500, "save_every_steps": 0, "eval_every_steps": 0})
    proc = _start(rf)
    run = tmp_path / "runs" / "t"
    _wait_for(run, lambda evs: len(steps_of(evs)) >= 2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C to `rigtune train --no-tui` is passed on as a graceful stop
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    evs = events(run)
    end = evs[-1]
    assert end["event"] == "end" and end["reason"] == "stopped" and end["step"] < 500
    assert (run / "checkpoints" / f"step-{end['step']:06d}").is_dir()
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"


def test_hangup_leaves_training_running(tmp_path, tiny_model):
    """Losing the terminal kills `rigtune train` but not the trainer, which finishes on its own."""
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 40, "save_every_steps": 0, "eval_every_steps": 0})
    proc = _start(rf)
    run = tmp_path / "runs" / "t"
    _wait_for(run, lambda evs: len(steps_of(evs)) >= 1)
    proc.send_signal(signal.SIGHUP)
    proc.wait(timeout=30)
    _wait_for(run, lambda evs: evs[-1]["event"] == "end")
    evs = events(run)
    assert evs[-1]["reason"] == "finished" and len(steps_of(evs)) == 40


def test_stop_command(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"max_steps": 500, "save_every_steps": 0, "eval_every_steps": 0})
    proc = _start(rf)
    run = tmp_path / "runs" / "t"
    _wait_for(run, lambda evs: len(steps_of(evs)) >= 1)
    res = rigtune("stop", run)
    assert res.returncode == 0 and "stopped" in res.stdout
    proc.wait(timeout=60)
    assert events(run)[-1]["reason"] == "stopped"


def test_ddp_two_processes_on_cpu(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, hardware={"strategy": "ddp", "num_processes": 2},
                  train={"max_steps": 4, "eval_every_steps": 2, "save_every_steps": 2})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "t"
    evs = events(run)
    assert [e["world_size"] for e in evs if e["event"] == "start"] == [2]
    assert [e["step"] for e in steps_of(evs)] == [1, 2, 3, 4]
    assert [e["event"] for e in evs].count("end") == 1
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def test_bad_dataset_fails_before_launch(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    rf = run_file(tmp_path, tiny_model, bad)
    for cmd in (("check", rf), ("train", rf, "--no-tui")):
        res = rigtune(*cmd)
        assert res.returncode == 2 and f"{bad}:2" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs" / "t").exists()


def test_init_cpu_demo_writes_a_valid_file(tmp_path):
    env = {**os.environ, "RIGTUNE_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "demo.toml"
    res = rigtune("init", "--preset", "cpu-demo", "--out", out, "--model", "/some/model", env=env)
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    assert 'base = "/some/model"' in text and str(DEMO) in text
    assert rigtune("init", "--preset", "cpu-demo", "--out", out, env=env).returncode == 2  # no silent overwrite
    assert "unknown preset" in rigtune("init", "--preset", "nope", "--out", tmp_path / "x.toml").stderr


def test_init_force_replaces_only_a_run_file(tmp_path, demo_cache):
    """init --force writes over an earlier run file (its first line says so), never over another file."""
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache)}  # the demo model built: init does not build it again
    notes = tmp_path / "notes.toml"
    notes.write_text("# my own notes\n")
    res = rigtune("init", "--preset", "cpu-demo", "--out", notes, "--force", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "this is a file rigtune did not write; --force replaces only an earlier rigtune run file" in res.stderr
    assert notes.read_text() == "# my own notes\n"
    out = tmp_path / "demo.toml"
    assert rigtune("init", "--preset", "cpu-demo", "--out", out, "--model", "/some/model", env=env).returncode == 0
    res = rigtune("init", "--preset", "cpu-demo", "--out", out, "--force", env=env)
    assert res.returncode == 0, res.stderr
    assert 'base = "/some/model"' not in out.read_text()


def test_cpu_demo_acceptance(demo_run, demo_cache, tmp_path):
    """The README's demo path: init the cpu-demo preset, train it, the loss falls, the adapter loads, and the
    fine-tune answers its held-out questions (asked in wordings training never used) where the base cannot.
    The training is the suite's one demo run (`rigtune demo --no-tui`, the conftest fixture the chat and export
    tests read too); `init --preset cpu-demo` writes the very run file it trained."""
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache)}
    out = tmp_path / "demo.toml"
    assert rigtune("init", "--preset", "cpu-demo", "--out", out, env=env, cwd=tmp_path).returncode == 0
    written, trained = runfile.load(out).values, runfile.load(demo_run / "run.toml").values
    assert written["output_root"] == "runs" and trained["output_root"] == str(demo_run.parent)  # made absolute
    assert {**written, "output_root": None} == {**trained, "output_root": None}
    stdout = (demo_run.parent.parent / "demo.out").read_text()
    run = demo_run
    evs = events(run)
    losses = [e["loss"] for e in steps_of(evs)]
    total = evs[0]["total_steps"]
    assert [e["step"] for e in steps_of(evs)] == list(range(1, total + 1))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    evals = [e for e in evs if e["event"] == "eval"]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    final = evals[-1]
    assert final["step"] == total and final["sample_total"] == 8 and len(final["samples"]) == 8
    assert final["sample_correct"] >= 6, [(x["question"], x["completion"]) for x in final["samples"]]
    assert final["base_correct"] <= 2  # most base answers lack the expected words: the fine-tune taught them
    for x in final["samples"]:  # the counts follow the demo data's rule, answer by answer
        assert x["correct"] == D.answered(x["completion"], x["expect"])
        assert x["base_correct"] == D.answered(x["base_completion"], x["expect"])
    assert f"held-out check: {final['sample_correct']} of 8 answered right" in stdout
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(json.loads(json.dumps(evs[0]["model"])))
    PeftModel.from_pretrained(base, run / "adapter")


def test_tensorboard_scalars_read_back(tmp_path, tiny_model):
    """[train] report_to = ["tensorboard"]: event files in RUN_DIR/tensorboard whose scalars are the run's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    rf = run_file(tmp_path, tiny_model, DEMO, name="tb", train={"max_steps": 4, "eval_every_steps": 2,
                                                              "report_to": ["tensorboard"]})
    res = rigtune("train", rf, "--no-tui")
    assert res.returncode == 0, res.stderr
    run = tmp_path / "runs" / "tb"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss"} <= set(acc.Tags()["scalars"])
    logged = {e["step"]: e["loss"] for e in steps_of(events(run))}
    board = {s.step: s.value for s in acc.Scalars("train/loss")}
    assert board.keys() == logged.keys() and all(abs(board[k] - logged[k]) < 1e-4 for k in logged)
    evals = [e["eval_loss"] for e in events(run) if e["event"] == "eval"]
    board_evals = [s.value for s in acc.Scalars("eval/loss")]  # float32 on the board: compare within its precision
    assert len(board_evals) == len(evals) and all(abs(a - b) < 1e-4 for a, b in zip(board_evals, evals))


def test_report_to_is_checked(tmp_path, tiny_model):
    rf = run_file(tmp_path, tiny_model, DEMO, train={"report_to": ["tensorbord"]})
    res = rigtune("check", rf)
    assert res.returncode == 2 and "report_to" in res.stderr and "Did you mean 'tensorboard'" in res.stderr
    rf = run_file(tmp_path, tiny_model, DEMO, train={"report_to": ["mlflow"]})
    import importlib.util
    if importlib.util.find_spec("mlflow") is None:  # not installed here: said, and training would go on
        res = rigtune("check", rf)
        assert res.returncode == 0 and "'mlflow', which is not installed here" in res.stderr
