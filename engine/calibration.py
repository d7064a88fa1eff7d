"""What this machine measured: one store of peaks and speeds, per machine, model shape and settings, fed by
`rigtune probe` (engine.probe) and by every finished run, and read by `plan`, the wizard's fit meter and the time
estimate, which show it beside the planned figure.

A record is one (max_seq_len, micro-batch) point of one model shape with one set of settings on one machine:
    machine   GPU model(s) (or the CPU), NVIDIA driver, CUDA, torch and rigtune versions: a new driver or torch
              is a new machine, its figures measured again
    shape     the model's shape (engine.planner.Arch's numbers; names and hub ids of one shape share it)
    settings  everything else the peak depends on: quantization, LoRA, optimizer, checkpointing, attention,
              strategy and processes, kernels, offload, the loss's chunking
    seq_len, micro_batch, peak_gib, tokens_per_s, measured_at, source ("probe" or "run NAME")
    and, from a probe, max_seq_len and max_micro_batch: the longest sequence and largest micro-batch that ran.
Other settings of seq_len and micro-batch are interpolated in tokens per micro-batch between measured points of
the same shape and settings; nothing is extrapolated beyond the points.

The store is one JSON file in rigtune's cache folder (RIGTUNE_CACHE; RIGTUNE_MEASURED names another), written whole to a temporary file and
renamed, so a killed writer leaves the previous one; an unreadable one is set aside and started afresh."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path

STORE = "measured.json"
VERSION = 1
SHAPE_FIELDS = ("model_type", "layers", "hidden", "intermediate", "heads", "kv_heads", "vocab", "tied", "head_dim",
                "extra_norms", "qk_norm", "qkv_bias", "fused", "experts", "experts_active", "expert_intermediate",
                "extra_params")
NOT_SHAPE = ("name", "hf_id", "size", "params_b", "active_params_b", "gated", "source", "download_bytes")
MEASURED_KEYS = ("peak_gib", "tokens_per_s", "max_seq_len", "max_micro_batch", "measured_at")


def store_path() -> Path:
    """RIGTUNE_MEASURED, or measured.json in rigtune's cache folder."""
    if os.environ.get("RIGTUNE_MEASURED"):
        return Path(os.environ["RIGTUNE_MEASURED"])
    from .demo import cache_dir
    return cache_dir() / STORE


# ---------------------------------------------------------------------------- keys

def machine_id(gpu_indices: list) -> dict:
    """This machine as the figures depend on it: the run's GPU model(s) - or the CPU -, driver, CUDA, torch and
    rigtune. Torch-free (NVML, or the faked machine under RIGTUNE_FAKE_NVML). Read once per process and machine
    (the wizard's fit meter asks on every keystroke)."""
    return dict(_machine(tuple(gpu_indices), os.environ.get("RIGTUNE_FAKE_NVML", "")))


@functools.lru_cache(maxsize=8)
def _machine(gpu_indices: tuple, fake: str) -> tuple:
    from importlib import metadata

    from .scan import cpu_model, nvml_module, scan_gpus

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"
    out = {"gpu": f"CPU: {cpu_model()} ({os.cpu_count()} threads)", "driver": "", "cuda": "",
           "torch": version("torch"), "rigtune": version("rigtune")}
    if gpu_indices:
        nvml = nvml_module()
        gpus, driver, cuda, _ = scan_gpus(nvml) if nvml is not None else ([], None, None, None)
        names = [gpus[i].name for i in gpu_indices if i < len(gpus)]
        out.update(gpu=" + ".join(names) or f"GPUs {list(gpu_indices)} (not seen by NVML)", driver=driver or "",
                   cuda=cuda or "")
    return tuple(out.items())


def shape_id(arch) -> str:
    """One model shape, whatever it is called: '<model_type> <layers>x<hidden> <digest>'."""
    numbers = {k: getattr(arch, k) for k in SHAPE_FIELDS}
    # the fields today's blocks added (engine.planner.blocks), where they are set: an older shape keeps its key
    numbers |= {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch) if f.name not in SHAPE_FIELDS
                and f.name not in NOT_SHAPE and getattr(arch, f.name) != f.default}
    if arch.experts:  # experts packed to 4 bits as they load since issue 25: figures measured before do not apply
        numbers["expert_storage"] = "4-bit at load"
    digest = hashlib.sha1(json.dumps(numbers, sort_keys=True).encode()).hexdigest()[:10]
    return f"{arch.model_type} {arch.layers}x{arch.hidden} {digest}"


def settings_of(cfg) -> dict:
    """The run file's settings that the peak and the speed depend on, besides the model, seq_len and the
    micro-batch."""
    m, t, h, lora = cfg.model, cfg.train, cfg.hardware, cfg.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else sorted(lora.target_modules)
    return {"quantization": m.quantization, "double_quant": m.double_quant, "compute_dtype": m.compute_dtype,
            "attn": m.attn_implementation, "lora_r": lora.r, "lora_targets": targets, "optimizer": t.optimizer,
            "gradient_checkpointing": t.gradient_checkpointing, "kernels": t.kernels, "loss_chunk": t.loss_chunk_tokens,
            "activation_offload": t.activation_offload, "strategy": h.strategy,
            "processes": h.num_processes * h.num_machines, "cpu_offload": h.cpu_offload, "packing": cfg.data.packing}


def arch_of(cfg):
    """The Arch of the run file's model, without a download (the demo model's folder, a local folder, the
    catalog, or a hub id whose config.json is cached); None when it cannot be read here."""
    from . import planner as P
    from .errors import BadInput
    from .runvalues import model_path
    try:
        return P.resolve_model(model_path(cfg.model.base), revision=cfg.model.revision or None)
    except BadInput:
        return None


# ---------------------------------------------------------------------------- the store

def load() -> list:
    path = store_path()
    try:
        data = json.loads(path.read_text())
        records = data["records"] if data.get("version") == VERSION else []
        return [r for r in records if isinstance(r, dict)]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # damaged: kept aside, not lost
        try:
            path.replace(path.with_name(STORE + ".unreadable"))
        except OSError:
            pass
        return []


def add(records: list) -> None:
    """Append records (dicts as described above) to the store; a point measured again replaces the old one."""
    path = store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = load()
    for new in records:
        kept = [r for r in kept if _point(r) != _point(new)] + [new]
    tmp = path.with_name(f".{STORE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": VERSION, "records": kept}, indent=1))
    tmp.replace(path)


def _point(r: dict) -> tuple:
    return (json.dumps(r.get("machine"), sort_keys=True), r.get("shape"), json.dumps(r.get("settings"), sort_keys=True),
            r.get("seq_len"), r.get("micro_batch"))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record(machine: dict, shape: str, settings: dict, seq_len: int, micro_batch: int, peak_gib: float,
           tokens_per_s: float | None, source: str, **extra) -> dict:
    return {"machine": machine, "shape": shape, "settings": settings, "seq_len": int(seq_len),
            "micro_batch": int(micro_batch), "peak_gib": round(float(peak_gib), 3),
            "tokens_per_s": None if tokens_per_s is None else round(float(tokens_per_s), 1),
            "measured_at": now(), "source": source, **extra}


def add_run(cfg, memory: dict, speeds: list, name: str) -> dict | None:
    """A finished (or stopped) run's own point: its peak (GPU memory reserved, or the process's RSS on the CPU)
    and its median tokens/s after the first logged step; None when it has too little to say or its model
    cannot be read here. Never fails the run: the store is a cache."""
    peak = memory.get("peak_gib") if cfg.hardware.gpus else memory.get("peak_rss_gib")
    arch = arch_of(cfg)
    if not peak or arch is None or len(speeds) < 2:
        return None
    import statistics
    point = record(machine_id(list(cfg.hardware.gpus)), shape_id(arch), settings_of(cfg), cfg.data.max_seq_len,
                   cfg.train.micro_batch_size, peak, statistics.median(speeds[1:]), f"run {name}")
    try:
        add([point])
    except OSError:
        return None
    return point


# ---------------------------------------------------------------------------- reading it back

def measured(machine: dict, shape: str, settings: dict, seq_len: int, micro_batch: int,
             records: list | None = None) -> dict | None:
    """The measured figures for these settings on this machine: {peak_gib, tokens_per_s, max_seq_len,
    max_micro_batch, measured_at, source, interpolated}; None when nothing of this shape and these settings
    was measured here, or the point lies outside the measured ones."""
    same = [r for r in (load() if records is None else records)
            if r.get("machine") == machine and r.get("shape") == shape and r.get("settings") == settings
            and isinstance(r.get("peak_gib"), (int, float))]
    if not same:
        return None
    probes = [r for r in same if r.get("max_seq_len")]
    limits = max(probes, key=lambda r: r["measured_at"]) if probes else {}
    exact = [r for r in same if r["seq_len"] == seq_len and r["micro_batch"] == micro_batch]
    if exact:
        point = max(exact, key=lambda r: r["measured_at"])
        peak, tps, at, source, between = point["peak_gib"], point.get("tokens_per_s"), point["measured_at"], \
            point.get("source", ""), False
    else:
        near = _around(same, seq_len * micro_batch)
        if near is None:
            return None
        (a, b), w = near
        peak = a["peak_gib"] + w * (b["peak_gib"] - a["peak_gib"])
        speeds = [r.get("tokens_per_s") for r in (a, b)]
        tps = speeds[0] + w * (speeds[1] - speeds[0]) if None not in speeds else None
        at, source, between = max(a["measured_at"], b["measured_at"]), f"{a.get('source')}, {b.get('source')}", True
    return {"peak_gib": round(peak, 3), "tokens_per_s": None if tps is None else round(tps, 1),
            "max_seq_len": limits.get("max_seq_len"), "max_micro_batch": limits.get("max_micro_batch"),
            "measured_at": at, "source": source, "interpolated": between}


def _around(points: list, tokens: int):
    """The two measured points whose tokens per micro-batch bracket `tokens`, and where it lies between them."""
    below = [r for r in points if r["seq_len"] * r["micro_batch"] <= tokens]
    above = [r for r in points if r["seq_len"] * r["micro_batch"] >= tokens]
    if not below or not above:
        return None
    a = max(below, key=lambda r: (r["seq_len"] * r["micro_batch"], r["measured_at"]))
    b = min(above, key=lambda r: (r["seq_len"] * r["micro_batch"], r["measured_at"]))
    ta, tb = a["seq_len"] * a["micro_batch"], b["seq_len"] * b["micro_batch"]
    return (a, b), (0.0 if tb == ta else (tokens - ta) / (tb - ta))


def ran_out(machine: dict, shape: str, settings: dict, seq_len: int, micro_batch: int,
            records: list | None = None) -> dict | None:
    """A probe's trial that did not fit at or below these settings (no longer a sequence, no larger a
    micro-batch): then these do not fit either. None when no such trial was measured here."""
    failed = [r for r in (load() if records is None else records)
              if r.get("fits") is False and r.get("machine") == machine and r.get("shape") == shape
              and r.get("settings") == settings and r["seq_len"] <= seq_len and r["micro_batch"] <= micro_batch]
    return max(failed, key=lambda r: r["measured_at"]) if failed else None


def for_run(cfg, arch=None, seq_len: int | None = None, micro_batch: int | None = None,
            settings: dict | None = None) -> tuple[dict | None, dict | None]:
    """(measured(), ran_out()) for a run file on this machine (its GPUs, or the CPU), at its own seq_len,
    micro-batch and settings unless others are given."""
    arch = arch or arch_of(cfg)
    if arch is None:
        return None, None
    records = load()
    key = (machine_id(list(cfg.hardware.gpus)), shape_id(arch), settings or settings_of(cfg),
           seq_len or cfg.data.max_seq_len, micro_batch or cfg.train.micro_batch_size)
    return measured(*key, records=records), ran_out(*key, records=records)


PLANNER_VERDICT_NOTES = ("to fit, change all of", "needs ", "TIGHT")


def apply(plan, m: dict | None, failed: dict | None, total_tokens: int | None = None, on_cpu: bool = False):
    """A plan with what this machine measured: `measured` (the probe's keys, as it printed them), the verdict
    from the measurement (a point between two that ran fits; one at or beyond a trial that ran out does not),
    and the duration at the measured speed. The planned figures stay beside it."""
    if m is not None:
        plan.measured = {k: m[k] for k in MEASURED_KEYS} | {"source": m["source"], "interpolated": m["interpolated"]}
        plan.verdict, plan.fits, plan.suggestion, plan.suggestion_steps = "fits", True, None, []
        plan.notes = [n for n in plan.notes if not n.startswith(PLANNER_VERDICT_NOTES)]
        plan.notes.append(describe(m, plan.per_gpu_peak_gib, on_cpu))
        if m.get("tokens_per_s") and total_tokens:
            from .planner import fmt_estimate
            planned = f"; planned {fmt_estimate(plan.duration_s_estimate)}" if plan.duration_s_estimate else ""
            plan.duration_s_estimate = round(total_tokens / m["tokens_per_s"])
            plan.notes.append(f"time: {fmt_estimate(plan.duration_s_estimate)} at the {m['tokens_per_s']:,.0f} "
                              f"tokens/s measured on this box{planned}.")
    elif failed is not None:
        plan.verdict, plan.fits = "does not fit", False
        plan.notes.append(f"measured on this box: max_seq_len {failed['seq_len']} at micro-batch "
                          f"{failed['micro_batch']} did not fit ({failed.get('why') or 'out of memory'}; probe, "
                          f"{failed['measured_at'].replace('T', ' ').rstrip('Z')} UTC), and these settings need more.")
    return plan


def describe(m: dict, planned_gib: float | None = None, on_cpu: bool = False) -> str:
    """One line: 'measured on this box: ...' with the planned figure beside it."""
    what = "peak RSS" if on_cpu else "peak"
    planned = f" (planned {planned_gib:.2f} GiB)" if planned_gib is not None else ""
    speed = f", {m['tokens_per_s']:,.0f} tokens/s" if m.get("tokens_per_s") else ""
    how = "interpolated between measured points" if m.get("interpolated") else f"{m.get('source') or 'measured'}"
    return (f"measured on this box: {what} {m['peak_gib']:.2f} GiB{planned}{speed}; "
            f"{how}, {m['measured_at'].replace('T', ' ').rstrip('Z')} UTC")
