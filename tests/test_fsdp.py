"""FSDP-QLoRA on the CPU: two gloo ranks shard the real NF4 (Params4bit) base through engine.torchside.fsdp, the code the
GPUs run. Compared with DDP on the same data and seed; the adapter is loaded back in one process; a
two-"machine" job runs on localhost; a kill during a save resumes to the same losses."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import DEMO, ROOT, events, rigtune, run_file

STEPS = {"max_steps": 6, "save_every_steps": 2, "eval_every_steps": 3}


def losses(run_dir):
    return {e["step"]: e["loss"] for e in events(run_dir) if e["event"] == "step"}


def trained(tmp_path, tiny_model, name, hardware, train=None, env=None, extra=()):
    rf = run_file(tmp_path, tiny_model, DEMO, name=name, hardware=hardware, train={**STEPS, **(train or {})})
    res = rigtune("train", rf, "--no-tui", *extra, env={**os.environ, **(env or {})}, timeout=400)
    return res, tmp_path / "runs" / name


def test_fsdp_matches_ddp_and_its_adapter_loads_in_one_process(tmp_path, tiny_model):
    res, fsdp_dir = trained(tmp_path, tiny_model, "fsdp", {"strategy": "fsdp", "num_processes": 2})
    assert res.returncode == 0, res.stdout + res.stderr
    res, ddp_dir = trained(tmp_path, tiny_model, "ddp", {"strategy": "ddp", "num_processes": 2})
    assert res.returncode == 0, res.stdout + res.stderr

    for run_dir in (fsdp_dir, ddp_dir):
        evs = events(run_dir)
        assert [e["world_size"] for e in evs if e["event"] == "start"] == [2]
        assert [e["step"] for e in evs if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]  # each step once
        assert [e["reason"] for e in evs if e["event"] == "end"] == ["finished"]
        assert sorted(p.name for p in run_dir.glob("adapter*")) == ["adapter"]
    f, d = losses(fsdp_dir), losses(ddp_dir)
    assert f[6] < f[1]
    for step in f:
        assert f[step] == pytest.approx(d[step], rel=1e-4), (step, f, d)

    # the saved adapter is plain PEFT: one process loads it on the base and gets the trainer's eval loss
    code = f"""
import json, torch
from peft import PeftModel
from engine import data as D, runfile
from engine.torchside.model import load_base, load_tokenizer
from engine.torchside.loss import evaluate
cfg = runfile.load({str(fsdp_dir / 'run.toml')!r})
tok = load_tokenizer(cfg)
examples, fmt, _ = D.load_examples(cfg.data.path, cfg.data.format)
_, eval_ex, _ = D.prepare(cfg, tok, examples, fmt)
model = PeftModel.from_pretrained(load_base(cfg, torch.device("cpu")), {str(fsdp_dir / 'adapter')!r})
print(json.dumps(evaluate(model, D.as_sequences(eval_ex, cfg.data.max_seq_len, cfg.data.packing), cfg,
                          tok.pad_token_id, torch.device("cpu"))))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    logged = [e["eval_loss"] for e in events(fsdp_dir) if e["event"] == "eval"][-1]
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(logged, rel=1e-4)


def test_fsdp_offload_8bit_checkpointing_resumes_after_a_kill(tmp_path, tiny_model):
    """cpu_offload, gradient checkpointing, accumulation and the 8-bit optimizer through FSDP; SIGKILL in the
    middle of saving step 4, then --resume from step 2 retraces the same losses."""
    hw = {"strategy": "fsdp", "num_processes": 2, "cpu_offload": True}
    train = {"gradient_checkpointing": True, "optimizer": "adamw_8bit", "gradient_accumulation_steps": 2}
    res, run_dir = trained(tmp_path, tiny_model, "off", hw, train, env={"RIGTUNE_FAULT": "killsave@4"})
    assert res.returncode != 0
    first = losses(run_dir)
    assert sorted(first) == [1, 2, 3, 4]
    res = rigtune("train", tmp_path / "off.toml", "--no-tui", "--resume", timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = [e for e in events(run_dir) if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 3, 4, 5, 6]
    again = {e["step"]: e["loss"] for e in steps[4:]}
    assert again[3] == pytest.approx(first[3], rel=1e-5) and again[4] == pytest.approx(first[4], rel=1e-5)
    assert [e["resumed_from"] for e in events(run_dir) if e["event"] == "start"][1].endswith("step-000002")


def test_sharded_adapters_split_their_state_match_whole_ones_and_resume_anywhere(tmp_path, tiny_model):
    """Sharded adapters (the default with AdamW) against whole ones on every rank (shard_adapters = false, what
    FSDP did before): the same losses; each rank holds half the adapter + optimizer bytes; a
    SIGKILL halfway through saving step 4 resumes from step 2 to the same losses; and the 2-rank checkpoint
    resumes in one process (--allow-changes), each rank count taking its slice of the same whole files."""
    hw = {"strategy": "fsdp", "num_processes": 2}
    train = {"gradient_accumulation_steps": 2, "max_grad_norm": 0.5}
    res, whole_dir = trained(tmp_path, tiny_model, "whole", {**hw, "shard_adapters": False}, train)
    assert res.returncode == 0, res.stdout + res.stderr
    res, run_dir = trained(tmp_path, tiny_model, "sharded", hw, train, env={"RIGTUNE_FAULT": "killsave@4"})
    assert res.returncode != 0
    first, whole = losses(run_dir), losses(whole_dir)
    assert sorted(first) == [1, 2, 3, 4]
    for step in first:
        assert first[step] == pytest.approx(whole[step], rel=1e-4), (step, first, whole)
    res = rigtune("train", tmp_path / "sharded.toml", "--no-tui", "--resume", timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    steps = [e for e in events(run_dir) if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 3, 4, 5, 6]
    for e in steps[4:]:
        assert e["loss"] == pytest.approx(whole[e["step"]], rel=1e-4)
    (mem,) = [e for e in events(run_dir) if e["event"] == "memory"]
    (mem_whole,) = [e for e in events(whole_dir) if e["event"] == "memory"]
    full = mem_whole["adapter_state_bytes"][0]
    assert mem_whole["adapter_state_bytes"] == [full, full] and full > 0
    assert all(b == pytest.approx(full / 2, rel=0.05) for b in mem["adapter_state_bytes"]), mem
    # the adapter the sharded run wrote is the same kind of file the whole run wrote
    from safetensors.torch import load_file
    a = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(whole_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    # a different number of ranks: one process resumes the 2-rank checkpoint of step 6
    one = run_file(tmp_path, tiny_model, DEMO, name="sharded",
                   hardware={"strategy": "fsdp", "num_processes": 1}, train={**STEPS, **train, "max_steps": 8})
    res = rigtune("train", one, "--no-tui", "--resume", "--allow-changes", timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    starts = [e for e in events(run_dir) if e["event"] == "start"]
    assert starts[-1]["world_size"] == 1 and starts[-1]["resumed_from"].endswith("step-000006")
    assert [e["step"] for e in events(run_dir) if e["event"] == "step"][-2:] == [7, 8]


def test_sharded_adapters_survive_an_out_of_memory_fallback(tmp_path, tiny_model):
    """oom_fallback under FSDP with sharded adapters, offloaded to CPU RAM with the weights: every rank goes back
    to the step-2 checkpoint (each taking its slice of it), halves the micro-batch, doubles accumulation, and
    finishes."""
    hw = {"strategy": "fsdp", "num_processes": 2, "cpu_offload": True}
    train = {"save_every_steps": 2, "eval_every_steps": 0, "oom_fallback": True, "micro_batch_size": 2}
    res, run_dir = trained(tmp_path, tiny_model, "oom", hw, train, env={"RIGTUNE_FAULT": "oom@4"})
    assert res.returncode == 0, res.stdout + res.stderr
    evs = events(run_dir)
    (fb,) = [e for e in evs if e["event"] == "oom_fallback"]
    assert fb["micro_batch_size"] == [2, 1] and fb["step"] == 2 and fb["resumed_from"].endswith("step-000002")
    assert [e["step"] for e in evs if e["event"] == "step"][-1] == 6
    assert [e["reason"] for e in evs if e["event"] == "end"] == ["finished"]


def test_two_machines_on_localhost_train_one_job(tmp_path, tiny_model):
    """machine_rank 0 and 1, one process each, each with its own run directory (as on two hosts)."""
    port = 29000 + os.getpid() % 2000
    procs, dirs = [], []
    for rank in (1, 0):
        node = tmp_path / f"node{rank}"
        node.mkdir()
        rf = run_file(node, tiny_model, DEMO, name="job", train=STEPS, hardware={
            "strategy": "fsdp", "num_processes": 1, "num_machines": 2, "machine_rank": rank,
            "main_process_ip": "127.0.0.1", "main_process_port": port})
        procs.append(subprocess.Popen([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui"], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        dirs.append(node / "runs" / "job")
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for run_dir in dirs:
        evs = events(run_dir)
        assert [e["world_size"] for e in evs if e["event"] == "start"] == [2]
        assert [e["step"] for e in evs if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert losses(dirs[0]) == losses(dirs[1])  # one job: both machines log the same global losses


@pytest.mark.parametrize("change, key, hint", [
    ({"train": {"optimizer": "paged_adamw_8bit"}}, "optimizer", "adamw_8bit"),
    ({"model": {"compute_dtype": "float16"}}, "compute_dtype", "bfloat16"),
])
def test_known_broken_fsdp_combinations_are_refused(tmp_path, tiny_model, change, key, hint):
    rf = run_file(tmp_path, tiny_model, DEMO, hardware={"strategy": "fsdp", "num_processes": 2}, **change)
    res = rigtune("check", rf)
    assert res.returncode == 2 and key in res.stderr and hint in res.stderr and "Traceback" not in res.stderr


def test_a_job_that_starts_with_fewer_processes_than_asked_is_refused(tmp_path, tiny_model):
    """accelerate can silently run N separate trainings (verified on this stack); here the trainer is started as
    one plain process for a 2-rank FSDP run file, and must stop instead of training alone."""
    from engine import launch, runfile
    rf = run_file(tmp_path, tiny_model, DEMO, name="lonely", hardware={"strategy": "fsdp", "num_processes": 2})
    run_dir = launch.prepare_run_dir(runfile.load(rf), resume=False, cwd=tmp_path)
    res = subprocess.run([sys.executable, "-m", "engine.torchside.trainer", str(run_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "asked for 2 processes (fsdp) but 1 started" in res.stderr
    ends = [e for e in events(run_dir) if e["event"] == "end"]
    assert len(ends) == 1 and ends[0]["reason"] == "error" and "refusing" in ends[0]["message"]
    assert not any(e["event"] == "step" for e in events(run_dir))


def test_fsdp_trains_a_16bit_base_as_ddp_does(tmp_path, tiny_model):
    """quantization = "none" under FSDP: plain LoRA on a sharded 16-bit base. It used to pass `check` and die
    loading (rank 0 broadcast its 4-bit quant states, and a 16-bit base has none: an empty buffer)."""
    runs = {}
    for strategy in ("fsdp", "ddp"):
        rf = run_file(tmp_path, tiny_model, DEMO, name=f"{strategy}16", hardware={"strategy": strategy, "num_processes": 2},
                      model={"quantization": "none"}, train=STEPS)
        res = rigtune("train", rf, "--no-tui", timeout=400)
        assert res.returncode == 0, res.stdout + res.stderr
        runs[strategy] = tmp_path / "runs" / f"{strategy}16"
    evs = events(runs["fsdp"])
    assert [e["world_size"] for e in evs if e["event"] == "start"] == [2]
    assert [e["reason"] for e in evs if e["event"] == "end"] == ["finished"]
    assert (runs["fsdp"] / "adapter" / "adapter_model.safetensors").exists()
    f, d = losses(runs["fsdp"]), losses(runs["ddp"])
    assert sorted(f) == [1, 2, 3, 4, 5, 6] and f[6] < f[1]
    for step in f:
        assert f[step] == pytest.approx(d[step], rel=1e-4), (step, f, d)
