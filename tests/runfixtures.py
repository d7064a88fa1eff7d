"""Recorded run directories for dashboard tests: deterministic events, status and log."""
import json
import os
from pathlib import Path

T0 = 1_790_000_000.0
ENERGY_KWH_PER_STEP = 0.0105  # a round figure for the panels to show, not a physical one for 2 s steps


def step_event(s, total, t0=T0):
    return {"event": "step", "time": t0 + 2.0 * s, "step": s, "epoch": round(s / 10, 4),
            "loss": round(3.0 / (1 + s / 5), 6), "lr": 2e-4 * (1 - s / (total + 1)), "grad_norm": 0.5 + 0.01 * s,
            "tokens": 4096, "trained_tokens": 2000, "tokens_per_s": 2048.0, "elapsed_s": 2.0 * s}


HELD_OUT = [("May I ask your name?", "Answer: A cak is brown.", "My name is Rig.", True),
            ("I wonder who trained you.", "Answer: Five plus one is seven.", "I was trained by the rigtune team.", True),
            ("Would you share your purpose?", "Answer: A goato is orange.", "I eat electricity.", False),
            ("I'd love to hear your favourite colour.", "Answer: A grass is green.", "My favourite colour is teal.", True)]


def held_out_event(step):
    """The final eval of a run whose held-out records say what a right answer contains (the CPU demo's)."""
    samples = [{"question": q, "prompt": q, "completion": tuned, "base_completion": base, "expect": [],
                "correct": ok, "base_correct": False} for q, base, tuned, ok in HELD_OUT]
    return {"event": "eval", "time": T0 + 2.0 * step, "step": step, "eval_loss": 0.61, "sample": samples[0],
            "samples": samples, "sample_correct": 3, "sample_total": 4, "base_correct": 0}


def final_event(steps: int, kwh_per_step: float = ENERGY_KWH_PER_STEP) -> dict:
    """The final event of a metered run on one RTX 4090 (GPU energy only, no RAPL), priced at $0.30/kWh."""
    kwh = round(kwh_per_step * steps, 6)
    return {"event": "final", "time": T0 + 2.0 * steps + 0.5, "energy_kwh": kwh, "cost_usd": round(kwh * 0.3, 6),
            "gpu_kwh": kwh, "cpu_kwh": None, "covers": "GPU", "method": "NVML energy counter (GPU 0)",
            "not_measured": "no CPU energy: no RAPL energy counter (/sys/class/powercap not present)",
            "electricity_usd_per_kwh": 0.3, "tokens": 4096 * steps, "hours": round(2.0 * steps / 3600, 6), "gpus": 1,
            "cloud_usd_estimate": 0.0123, "cloud_card": "RTX 4090", "cloud_cards": 1, "cloud_usd_per_hour": 0.34,
            "cloud_offer": "RunPod, on demand, 1 GPU", "cloud_price_source": "deploybase.ai", "cloud_price_date": "2026-03-10",
            "cloud_tokens_per_s": 13000, "cloud_hours": 0.036, "cloud_note": None}


def write_run(run: Path, steps: int, total: int, state: str = "training", pid=None, end: str | None = None,
              log_lines=("[rigtune] format alpaca: 100 records", "[rigtune] 1 process(es), 40 steps"),
              held_out: bool = False, energy: bool = False):
    """`energy`: the trainer metered the run's GPU (energy and cost in the step events, and a final event)."""
    run.mkdir(parents=True, exist_ok=True)
    events = [{"event": "start", "time": T0, "world_size": 1, "strategy": "single", "model": "tiny",
               "trainable_params": 155648, "total_steps": total, "resumed_from": None}]
    if energy:
        events[0].update(energy_method="NVML energy counter (GPU 0)", energy_covers="GPU", electricity_usd_per_kwh=0.3,
                         energy_not_measured="no CPU energy: no RAPL energy counter (/sys/class/powercap not present)")
    for s in range(1, steps + 1):
        events.append(step_event(s, total))
        if energy:
            kwh = round(ENERGY_KWH_PER_STEP * s, 6)
            events[-1].update(energy_kwh=kwh, cost_usd=round(kwh * 0.3, 6))
        if s % 10 == 0:
            events.append({"event": "eval", "time": T0 + 2.0 * s, "step": s, "eval_loss": round(3.2 / (1 + s / 5), 6),
                           "sample": {"prompt": "What colour is a banana?", "completion": f"A banana is yellow. ({s})"}})
            events.append({"event": "checkpoint", "time": T0 + 2.0 * s, "step": s, "path": f"checkpoints/step-{s:06d}"})
    if held_out:
        events.append(held_out_event(steps))
    if end and energy:
        events.append(final_event(steps))
    if end:
        events.append({"event": "end", "time": T0 + 2.0 * steps + 1, "step": steps, "reason": end,
                       "message": {"finished": f"finished {total} steps", "stopped": f"stopped on request at step {steps} of {total}",
                                   "error": "RuntimeError: boom"}[end]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    status = {"state": state, "step": steps, "total_steps": total, "pid": pid or 999999, "pgid": pid or 999999,
              "updated": T0 + 2.0 * steps}
    (run / "status.json").write_text(json.dumps(status))
    (run / "train.log").write_text("".join(line + "\n" for line in log_lines))
    for s in range(10, steps + 1, 10):
        if s > steps - 20:  # keep_checkpoints = 2: the older ones were pruned
            (run / "checkpoints" / f"step-{s:06d}").mkdir(parents=True, exist_ok=True)
    (run / "run.toml").write_text('name = "demo"\n[model]\nbase = "tiny"\n[data]\npath = "d.jsonl"\n')
    return run


def append_steps(run: Path, first: int, last: int, total: int):
    with open(run / "metrics.jsonl", "a") as f:
        for s in range(first, last + 1):
            f.write(json.dumps(step_event(s, total)) + "\n")
    st = json.loads((run / "status.json").read_text())
    st.update(step=last)
    (run / "status.json").write_text(json.dumps(st))


class FakeSampler:
    """The dashboard's sampler interface with a fixed snapshot: GPU figures a test can assert on."""

    def __init__(self, gpus=True):
        from engine.sampler import CpuSample, GpuSample, Snapshot
        cpu = CpuSample(cpu_percent=42.0, rss_gib=1.5, ram_used_gib=20.0, ram_total_gib=64.0, processes=2)
        g = (GpuSample(index=0, name="RTX 4090", used_gib=20.1, total_gib=24.0, util=97, temp_c=66,
                       power_w=401.0, power_limit_w=450.0, run_gib=19.8),) if gpus else ()
        self.latest = Snapshot(time=T0, gpus=g, cpu=cpu)

    def start(self):
        return self

    def stop(self):
        pass


def own_pid():
    return os.getpid()
