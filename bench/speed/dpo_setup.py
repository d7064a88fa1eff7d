"""What the DPO benchmarks (dpo.py, dpo_reference.py) share: the CPU demo's SFT adapter they start from, the
DPO demo's run-file values, and the held-out preference score of an adapter - rigtune's definition
(engine.torchside.methods.pref.held_out_scores: the share of held-out pairs whose chosen answer has the higher
summed log-probability), computed by one function for every adapter, whichever stack trained it."""
from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from run import PY, timed  # noqa: E402  (bench/speed/run.py: the same timing wrapper as the SFT bench)

__all__ = ["PY", "ROOT", "HERE", "timed", "timed_alone", "company", "bench_env", "sft_adapter", "dpo_values", "score",
           "events", "unchanged"]

BUSY = 25.0   # % of a core: a process outside this bench using more is another job on this shared machine


def bench_env() -> dict:
    """One training process per run on all cores, offline, fp32 everywhere (no accelerate autocast)."""
    return {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_MIXED_PRECISION": "no", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT)}


def others_busy() -> list:
    """Processes outside this bench's own tree using more than BUSY % of a core over the last second."""
    import time

    import psutil
    me = psutil.Process()
    mine = {me.pid, *(c.pid for c in me.children(recursive=True))}
    procs = [p for p in psutil.process_iter(["pid"]) if p.pid not in mine]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for p in procs:
        try:
            if p.cpu_percent(None) > BUSY:
                busy.append(" ".join(p.cmdline()[:4])[:120] or p.name())
        except psutil.Error:
            pass
    return busy


def timed_alone(argv_for, env, cwd, tries: int = 4, wait_s: float = 600) -> dict:
    """timed(argv_for(attempt)), on this machine alone: wait (up to wait_s) until no other job is busy, run, and
    run again (up to `tries` times, each with its own argv_for(attempt): a fresh run directory) when one was
    busy during the run, sampled every second from a thread. The result says which try it is ("tries") and, if
    every try had company, what was running beside the last ("contended")."""
    import threading
    import time
    for attempt in range(1, tries + 1):
        deadline = time.time() + wait_s
        while others_busy() and time.time() < deadline:
            time.sleep(5)
        seen, done = [], threading.Event()

        def watch():
            while not done.is_set():
                seen.extend(others_busy())

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            r = timed(argv_for(attempt), env, cwd)
        finally:
            done.set()
        thread.join()
        r["tries"], r["contended"] = attempt, sorted(set(seen))
        if not seen or attempt == tries:
            return r
        print(f"  (another job was busy during the run, trying again: {r['contended'][:2]})", flush=True)
    return r


def company(r: dict) -> str:
    """What the per-run line says about other jobs on this shared machine (dpo_setup.timed_alone)."""
    if r["contended"]:
        return f"; another job was busy beside it on every try ({r['contended'][0]})"
    return f" (try {r['tries']}: the runs before it had another job beside them)" if r["tries"] > 1 else ""


def sft_adapter(tmp: Path, given: str | None = None) -> tuple[Path, str]:
    """(the CPU demo's finished SFT run, how it was got): --sft-adapter, else ./runs/cpu-demo when it is there,
    else the CPU demo trained now into `tmp` (its preset as `rigtune demo` runs it)."""
    if given:
        return Path(given).resolve(), f"given ({given})"
    existing = ROOT / "runs" / "cpu-demo"
    if (existing / "adapter" / "adapter_model.safetensors").is_file():
        return existing, "runs/cpu-demo, reused"
    from engine import runfile, runvalues
    values = runvalues.build_demo_model(runvalues.values_for("cpu-demo")[0])
    values["output_root"] = str(tmp / "runs")
    rf = tmp / "cpu-demo.toml"
    runfile.save(values, rf)
    timed([PY, "-m", "tui.cli", "train", str(rf), "--no-tui"], bench_env(), ROOT)
    return tmp / "runs" / "cpu-demo", "the CPU demo's preset, trained first by this run of the bench"


def dpo_values(name: str, output_root: Path, adapter: Path, **train) -> dict:
    """The DPO demo's run-file values (presets/cpu-demo-dpo.toml) starting from `adapter`, with [train] keys
    overridden by `train`."""
    from engine import runvalues
    values = runvalues.build_demo_model(runvalues.values_for("cpu-demo-dpo")[0])
    values["name"], values["output_root"] = name, str(output_root)
    values["model"]["adapter"] = str(adapter)
    values["train"].update(train)
    return values


def events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def score(values: dict, adapter: Path) -> dict:
    """The held-out pairs (values' eval_path) scored with `adapter` on the run's NF4 base, loaded as rigtune's
    trainer loads a starting adapter: {"pref_accuracy", "margin" (mean summed log-probability of chosen minus
    rejected), "pairs"}. Refuses an adapter whose file does not land whole in the model (names or shapes)."""
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from engine import modelfiles, prefdata, runfile
    from engine.torchside.methods.pref import PairItem, answer_logps
    from engine.torchside.model import load_model, load_tokenizer
    from engine.torchside.saving import load_adapter_weights
    v = copy.deepcopy(values)
    v["model"]["adapter"] = str(adapter)
    cfg = runfile.validate(v)
    tok = load_tokenizer(cfg)
    _, held, _ = prefdata.prepare_pairs(cfg, tok)
    loaded = load_model(cfg, torch.device("cpu"))
    file = modelfiles.start_adapter(cfg) / "adapter_model.safetensors"
    load_adapter_weights(loaded.model, file, False)
    saved, now = load_file(str(file)), get_peft_model_state_dict(loaded.model)
    bad = sorted(set(saved) ^ set(now))
    bad += [k for k in saved if k in now and not torch.equal(saved[k].float(), now[k].float())]
    if bad:
        raise SystemExit(f"{file} did not load whole into the model: {bad[:5]}")
    model = loaded.model.eval()
    items = [PairItem(i, p.chosen, p.rejected, True) for i, p in enumerate(held)]
    preferred, margin = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(items), 4):
            s = answer_logps(model, items[i:i + 4], tok.pad_token_id, torch.device("cpu"),
                             cfg.train.loss_chunk_tokens, loaded.head)
            preferred += int((s.chosen > s.rejected).sum())
            margin += float((s.chosen - s.rejected).sum())
    return {"pref_accuracy": preferred / len(items), "margin": margin / len(items), "pairs": len(items)}


def unchanged(start: Path, adapter: Path) -> float:
    """The share of `adapter`'s LoRA weights still equal to the starting adapter's, in the dtype `adapter` keeps
    them in: how many of the optimizer's updates were too small to change a stored weight."""
    import torch
    from safetensors.torch import load_file
    s, a = load_file(str(start / "adapter_model.safetensors")), load_file(str(adapter / "adapter_model.safetensors"))
    same = sum(int((s[k].to(a[k].dtype) == a[k]).sum()) for k in s)
    return same / sum(v.numel() for v in s.values())
