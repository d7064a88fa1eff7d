"""The plan of a run: plan() puts the memory terms, the strategy, the advice and the time together into a Plan
(what `rigtune plan --json` prints), from a run file's values (input_from_run). What this machine measured
(engine.calibration) is laid over it by the caller."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .advice import suggest
from .arch import GIB, Arch
from .memory import (DTYPE_BYTES, FIT_MARGIN, PlanInput, breakdown, expert_bytes, headroom, max_micro_batch,
                     max_seq_len, ram_needed, verdict)
from .strategy import choose_strategy
from .throughput import card_named, fmt_estimate, link_note, tokens_per_s


@dataclass
class Plan:
    per_gpu_peak_gib: float
    breakdown_gib: dict
    fits: bool
    max_seq_len: int
    max_micro_batch: int
    strategy: str
    cpu_offload: bool
    notes: list = field(default_factory=list)
    suggestion: dict | None = None
    ram_needed_gib: float = 0.0
    gpu_gib: float = 0.0
    card: str = ""
    tokens_per_s_estimate: float | None = None
    duration_s_estimate: float | None = None
    suggestion_steps: list = field(default_factory=list)  # what each change in `suggestion` does, in words
    arch: str = ""                   # the config's model_type
    params_b: float = 0.0            # total parameters, billions (every expert of an MoE model)
    active_params_b: float = 0.0     # parameters a token runs through (= params_b for a dense model)
    download_gib: float = 0.0        # the weights' download
    headroom_gib: float = 0.0        # the card less the planned per-GPU peak (negative when it is over the card)
    verdict: str = ""                # fits | tight (under the card, within FIT_MARGIN of it) | does not fit
    measured: dict | None = None     # what this machine measured at these settings (engine.calibration.apply)

    def to_json(self) -> dict:
        return asdict(self)


def plan(inp: PlanInput, pick_strategy: bool = False, total_tokens: int | None = None) -> Plan:
    """The plan of a run: per-card memory by term, whether it fits, the longest sequence and largest
    micro-batch that do, the advice that makes it fit, and - on a named card - tokens/s and, given the
    run's total tokens, how long it takes."""
    notes = []
    if pick_strategy:
        inp, why = choose_strategy(inp)
        notes.append(why)
    if len(inp.gpus) > 1 and inp.strategy == "single":
        notes.append("strategy single uses one card; ddp or fsdp would use all of them.")
    link = link_note(inp)
    if link:
        notes.append(link)
    if inp.arch.experts:
        how = ("4-bit like the linear layers, quantized as they load" if inp.quantization in ("nf4", "fp4")
               else f"in {inp.compute_dtype}")
        notes.append(f"{inp.arch.name} is a mixture of experts: all {inp.arch.experts} experts per layer stay in "
                     f"memory, {how} ({expert_bytes(inp) / GIB:.1f} GiB of experts and routers), and each token runs "
                     f"through {inp.arch.experts_active}; LoRA trains the attention layers, the experts stay frozen.")
    if inp.method == "grpo":
        a = inp.arch
        kv = 2 * a.layers * a.kv_dim * inp.seq_len * inp.rows_per_item * inp.micro_batch * DTYPE_BYTES[inp.compute_dtype]
        notes.append(f"GRPO: each prompt's {inp.rows_per_item} sampled answers are one micro-batch item "
                     f"({inp.rows_per_item * inp.micro_batch} sequences of up to {inp.seq_len} tokens per forward); "
                     f"sampling them holds a KV cache of {kv / GIB:.2f} GiB (no gradients) before that forward.")
    elif inp.method in ("dpo", "orpo"):
        notes.append(f"preference pairs: each micro-batch item is a chosen and a rejected answer, {2 * inp.micro_batch} "
                     "sequences per forward; DPO's reference log-probabilities are one no-grad pass over the pairs "
                     "before the first step (no second model in memory).")
    if inp.strategy == "fsdp":
        notes.append("FSDP plans are the least certain: against published FSDP-QLoRA peaks this model ranges from "
                     "41% under to 18% over (bench/planner_accuracy); [train] oom_fallback = true halves the "
                     "micro-batch if it runs out.")
    terms = breakdown(inp)
    total = sum(terms.values())
    card = min(inp.gpus)
    said = verdict(inp)
    ram = ram_needed(inp)
    if inp.ram_gib is not None and ram > inp.ram_gib:
        notes.append(f"needs {ram:.0f} GiB of system RAM, {inp.ram_gib:.0f} GiB present.")
    if said == "tight":
        notes.append(tight_words(total, card))
    elif said != "fits" and total > card and not pick_strategy:
        notes.append(f"needs {total:.1f} GiB per GPU, the card has {card:.1f} GiB.")
    advice = suggest(inp)
    if advice:
        notes.append("to fit, change all of: " + "; ".join(advice["steps"]) + f" (planned {advice['peak_gib']:.1f} "
                     f"GiB, about {advice['slowdown']:.2g}x the time).")
    named = card_named(inp.card)
    speed = duration = None
    if named is not None:
        timed = replace(inp, **advice["change"]) if advice else inp
        speed = tokens_per_s(timed, named)
        if total_tokens:
            duration = total_tokens / speed
            notes.append(f"time: {fmt_estimate(duration)} on {len(inp.gpus)} x {named.name} "
                         f"(~{speed:,.0f} tokens/s{' after the changes above' if advice else ''}).")
    return Plan(per_gpu_peak_gib=round(total, 2), breakdown_gib={k: round(v, 3) for k, v in terms.items()},
                fits=said == "fits", max_seq_len=max_seq_len(inp), max_micro_batch=max_micro_batch(inp),
                strategy=inp.strategy, cpu_offload=inp.cpu_offload, notes=notes,
                suggestion=advice["keys"] if advice else None, suggestion_steps=advice["steps"] if advice else [],
                ram_needed_gib=round(ram, 1), gpu_gib=card, card=named.name if named else "",
                tokens_per_s_estimate=round(speed) if speed else None,
                duration_s_estimate=round(duration) if duration else None,
                arch=inp.arch.model_type, params_b=float(f"{inp.arch.total_params / 1e9:.5g}"),
                active_params_b=float(f"{inp.arch.active_params / 1e9:.5g}"),
                download_gib=float(f"{inp.arch.download_gib:.4g}"), headroom_gib=round(headroom(inp), 2),
                verdict=said)


def tight_words(peak_gib: float, card_gib: float) -> str:
    """What "tight" means, in one sentence a user reads before launching."""
    return (f"TIGHT: {peak_gib:.2f} of {card_gib:g} GiB, within the planner's error margin of {FIT_MARGIN:.0%} "
            f"({card_gib - peak_gib:.2f} GiB left); it may run out of memory.")


def input_from_run(cfg, arch: Arch, gpus: list, ram_gib: float | None, link: str = "nvlink",
                   card: str = "") -> PlanInput:
    """Plan inputs from a run file's values."""
    kernels = "liger" if cfg.train.kernels == "liger" or (cfg.train.kernels == "auto" and cfg.hardware.gpus) else "none"
    return PlanInput(
        arch=arch, gpus=gpus, link=link, card=card, accum=cfg.train.gradient_accumulation_steps, kernels=kernels,
        shard_adapters=cfg.hardware.shard_adapters, seq_len=cfg.data.max_seq_len, micro_batch=cfg.train.micro_batch_size,
        lora_r=cfg.lora.r, lora_targets=cfg.lora.target_modules, lora_dropout=cfg.lora.dropout,
        optimizer=cfg.train.optimizer, gradient_checkpointing=cfg.train.gradient_checkpointing,
        attn=cfg.model.attn_implementation, quantization=cfg.model.quantization, double_quant=cfg.model.double_quant,
        compute_dtype=cfg.model.compute_dtype, strategy=cfg.hardware.strategy, cpu_offload=cfg.hardware.cpu_offload,
        ram_gib=ram_gib, loss_chunk=cfg.train.loss_chunk_tokens, activation_offload=cfg.train.activation_offload,
        rows_per_item={"dpo": 2, "orpo": 2, "grpo": cfg.train.num_generations}.get(cfg.train.method, 1),
        method=cfg.train.method)
