"""Advice: the complete set of run-file changes that makes a run fit, the fastest of every combination that
does (timed with throughput.py), each change in words; and the rule that keeps the effective batch when the
micro-batch or the number of processes changes."""
from __future__ import annotations

from dataclasses import replace

from .memory import PlanInput, fits, largest, peak, ram_needed
from .throughput import DEFAULT_CARD, Card, card_named, load_cards, tokens_per_s


def keep_effective_batch(micro_batch: int, accum: int, new_micro_batch: int, processes: int = 1,
                         new_processes: int = 1) -> int:
    """The gradient accumulation that keeps the effective batch (micro-batch x accumulation x processes) when
    the micro-batch or the number of processes changes; at least 1. The one rule the planner's advice, the
    tiers' run values, the trainer's out-of-memory fallback and the wizard's fix all follow."""
    return max(1, micro_batch * accum * processes // max(1, new_micro_batch * new_processes))


# The run-file key of each PlanInput field that advice may change.
RUN_KEYS = {"micro_batch": "train.micro_batch_size", "accum": "train.gradient_accumulation_steps",
            "gradient_checkpointing": "train.gradient_checkpointing", "attn": "model.attn_implementation",
            "optimizer": "train.optimizer", "loss_chunk": "train.loss_chunk_tokens",
            "activation_offload": "train.activation_offload", "strategy": "hardware.strategy",
            "cpu_offload": "hardware.cpu_offload", "seq_len": "data.max_seq_len"}
SHORTEST_SEQ = 128  # below this, shortening sequences is no advice


def _candidates(inp: PlanInput):
    """Every combination of the changes advice may make, each keeping the effective batch. Only settings the
    engine accepts for the strategy: 8-bit AdamW (never paged, which FSDP refuses), CPU offload only with FSDP."""
    from itertools import product
    mbs, b = [inp.micro_batch], inp.micro_batch
    while b > 1:
        b //= 2
        mbs.append(b)
    layouts = [(inp.strategy, inp.cpu_offload)]
    if len(inp.gpus) > 1 and inp.strategy in ("ddp", "fsdp"):
        layouts += [x for x in (("fsdp", False), ("fsdp", True)) if x not in layouts]
    options = product([inp.gradient_checkpointing] + ([True] if not inp.gradient_checkpointing else []),
                      [inp.attn] + (["sdpa"] if inp.attn == "eager" else []),
                      [inp.optimizer] + (["adamw_8bit"] if inp.optimizer == "adamw_torch" else []),
                      [inp.loss_chunk] + ([c for c in (4096, 1024) if not inp.loss_chunk or c < inp.loss_chunk]
                                          if inp.loss == "rigtune" and inp.kernels != "liger" else []),
                      [inp.activation_offload] + ([True] if not inp.activation_offload else []),
                      mbs, layouts)
    for gc, attn, opt, chunk, act, mb, (strategy, offload) in options:
        if strategy == "fsdp" and opt == "paged_adamw_8bit":
            opt = "adamw_8bit"  # the same 8-bit state; FSDP cannot save paged optimizer state
        yield replace(inp, gradient_checkpointing=gc, attn=attn, optimizer=opt, loss_chunk=chunk,
                      activation_offload=act, micro_batch=mb, strategy=strategy, cpu_offload=offload,
                      accum=keep_effective_batch(inp.micro_batch, inp.accum, mb))


def _seconds_per_token(inp: PlanInput, card: Card) -> float:
    return 1.0 / tokens_per_s(inp, card)


def _step_words(field: str, old, new, inp: PlanInput, cand: PlanInput) -> str:
    if field == "micro_batch":
        return f"micro-batch {new} with gradient accumulation {cand.accum} (the same effective batch)"
    if field == "gradient_checkpointing":
        return "gradient checkpointing on (recomputes activations in backward: ~1.5x the matmul work)"
    if field == "attn":
        return "SDPA attention (no s^2 attention scores kept)"
    if field == "optimizer":
        return "8-bit AdamW (a quarter of the optimizer state)"
    if field == "loss_chunk":
        return f"chunked loss, {new} tokens at a time (the full logits are never held)"
    if field == "activation_offload":
        return "activations saved for backward wait in CPU RAM (slower steps)"
    if field == "cpu_offload":
        return f"FSDP with CPU offload (needs {ram_needed(cand):.0f} GiB of RAM)"
    if field == "strategy":
        return "shard the model over the cards with FSDP"
    if field == "seq_len":
        return f"shorten sequences to {new} tokens (longer examples are cut)"
    return f"{field} {old} -> {new}"


def suggest(inp: PlanInput, budget_gib: float | None = None, margin: float | None = None) -> dict | None:
    """The complete set of changes that makes a run fit (in `budget_gib` per card, default the card), or None
    when it fits already or nothing does. Of all the combinations of changes that fit, the one with the
    shortest estimated training time for the same data (fewest changes on a tie); shortening sequences
    changes the data, so it comes only when nothing else fits. A fit is with the planner's margin (memory.fits);
    tests/test_planner.py writes the keys into a run file and plans it again. `margin` overrides that margin
    (0 when `budget_gib` is itself a target with room to spare, as after an out-of-memory).
      {"change": {PlanInput field: value}, "keys": {run-file key: value}, "steps": [words per change],
       "peak_gib": planned peak after the change, "slowdown": estimated time / time as set}"""
    if fits(inp, budget_gib, margin):
        return None
    card = card_named(inp.card) or load_cards()[DEFAULT_CARD]
    best = None
    for cand in _candidates(inp):
        if fits(cand, budget_gib, margin):
            changed = sum(getattr(cand, f) != getattr(inp, f) for f in RUN_KEYS)
            key = (round(_seconds_per_token(cand, card), 12), changed)
            if best is None or key < best[0]:
                best = (key, cand)
    if best is None:  # nothing fits as the data is: the combination that allows the longest sequences
        for cand in _candidates(inp):
            longest = largest(cand, "seq_len", inp.seq_len - 1, budget_gib, margin)
            if longest >= SHORTEST_SEQ:
                cand = replace(cand, seq_len=longest)
                key = (-longest, round(_seconds_per_token(cand, card), 12))
                if best is None or key < best[0]:
                    best = (key, cand)
    if best is None:
        return None
    cand = best[1]
    change = {f: getattr(cand, f) for f in RUN_KEYS if getattr(cand, f) != getattr(inp, f)}
    steps = [_step_words(f, getattr(inp, f), v, inp, cand) for f, v in change.items() if f != "accum"]
    return {"change": change, "keys": {RUN_KEYS[f]: v for f, v in change.items()}, "steps": steps,
            "peak_gib": round(peak(cand), 2),
            "slowdown": round(_seconds_per_token(cand, card) / _seconds_per_token(inp, card), 2)}
