"""The time estimate against throughput figures: the calibration points that set ACHIEVED (one per class of
card) and the held-out ones, reported apart.

Each point is a training throughput in tokens/s with its settings and source. The planner's estimate
(engine.planner.tokens_per_s) is matmul FLOPs per token (frozen 4-bit base: forward + input-gradient
backward, + recompute with checkpointing) over the card's dense bf16 peak times ACHIEVED[class], plus
bitsandbytes' dequantize (DEQUANT_BYTES per parameter per pass over the memory bandwidth).

Run: .venv/bin/python bench/planner_accuracy/throughput.py   (writes THROUGHPUT.md beside it)
"""
import datetime
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from engine import planner as P  # noqa: E402

TORCHTUNE = ("torchtune README, 'Memory and training speed' (pytorch/torchtune): Llama 3.1 8B, batch 2, packed "
             "to 2,048 tokens, torch.compile, activation checkpointing (the recipe configs' default)")
QWEN = ("Qwen README, 'Profiling of Memory and Speed' (QwenLM/Qwen): LoRA on a bf16 base, one A100-SXM4-80G, "
        "flash attention 2, gradient checkpointing, batch 1 x accumulation 8 per iteration, rows padded to the "
        "length, r64 on every linear; tokens/s = 8 x length / (s/it)")
POINTS = [
    # (id, set, card, settings, measured tokens/s, source[, model]); model defaults to Llama-3.1-8B
    ("torchtune-8b-qlora-4090", "calibration", "RTX 4090",
     dict(seq_len=2048, micro_batch=2, lora_r=8, quantization="nf4"), 2413, TORCHTUNE + "; QLoRA"),
    ("rigtune-8b-h200", "calibration", "H200",
     dict(seq_len=2048, micro_batch=4, lora_r=16, quantization="nf4"), None,
     "rigtune's engine, Llama-3.1-8B shape, random weights, packed alpaca (gpu_points.json, llama8b-s2048-b4-gc)"),
    ("torchtune-8b-lora-4090", "held-out", "RTX 4090",
     dict(seq_len=2048, micro_batch=2, lora_r=8, quantization="none"), 3083, TORCHTUNE + "; LoRA, bf16 base"),
    ("torchtune-8b-lora-a6000", "held-out", "RTX A6000",
     dict(seq_len=2048, micro_batch=2, lora_r=8, quantization="none"), 4699, TORCHTUNE + "; LoRA, bf16 base"),
    # Qwen-1's LoRA rows at 2,048 and 8,192 tokens (chosen before comparing, as for its memory points); its
    # Q-LoRA rows are left out: they run GPTQ's CUDA kernels, whose cost is not bitsandbytes' dequantize
    *[(f"qwen1-{size.lower()}-lora-{seq}", "held-out", "A100 80GB",
       dict(seq_len=seq, micro_batch=1, lora_r=64, quantization="none", attn="flash_attention_2"),
       8 * seq / sec, QWEN + f"; {size}, {seq} tokens: {sec} s/it", f"Qwen-{size}")
      for size, seq, sec in [("1.8B", 2048, 1.7), ("1.8B", 8192, 6.8), ("7B", 2048, 5.2), ("7B", 8192, 21.3),
                             ("14B", 2048, 8.4), ("14B", 8192, 36.0)]],
]


def measured_h200() -> float:
    runs = json.loads((HERE / "gpu_points.json").read_text())["runs"]
    return [r for r in runs if r["id"] == "llama8b-s2048-b4-gc" and r.get("packed_attention") == "varlen_attn"][-1][
        "tokens_per_s"]


def main(write: bool = True) -> dict:
    sys.path.insert(0, str(HERE))
    from run import EXTRA  # the Qwen-1 shapes, shared with the memory points
    models = {**P.load_models(), **EXTRA}
    rows, errors, derived = [], {"calibration": [], "held-out": []}, {}
    for pid, kind, card_name, settings, measured, source, *model in POINTS:
        arch = models[model[0] if model else "Llama-3.1-8B"]
        measured = measured or measured_h200()
        card = P.card_named(card_name)
        inp = P.PlanInput(arch=arch, gpus=[card.vram_gib], card=card.name, **settings)
        est = P.tokens_per_s(inp, card)
        err = (est - measured) / measured
        errors[kind].append(abs(err))
        if kind == "calibration":  # the factor that makes this point exact
            parts = P.micro_batch_seconds(inp, card)
            at_peak = parts["compute"] * P.ACHIEVED[card.kind]
            rest = sum(v for k, v in parts.items() if k != "compute")
            derived[card.kind] = at_peak / (inp.seq_len * inp.micro_batch / measured - rest)
        rows.append(f"| {pid} | {kind} | {card.name} | {measured:,.0f} | {est:,.0f} | {err:+.1%} | {source} |")
    mae = {k: sum(v) / len(v) for k, v in errors.items()}
    arch = models["Llama-3.1-8B"]
    example = P.PlanInput(arch=arch, gpus=[24.0], card="RTX 4090", seq_len=2048, micro_batch=4, kernels="liger")
    tokens = 3000 * 700
    out = ["# Time estimate: tokens/s against published and measured throughput", "",
           f"Computed {datetime.date.today()}.", "",
           f"**Held-out mean absolute error: {mae['held-out']:.1%}** ({len(errors['held-out'])} points).  ",
           f"Calibration points: {mae['calibration']:.1%} (in-sample). ACHIEVED derived from them: "
           + ", ".join(f"{k} {v:.3f}" for k, v in derived.items())
           + f" (the planner uses {P.ACHIEVED}).", "",
           "| point | set | card | measured tokens/s | estimate | error | source |", "|---|---|---|---|---|---|---|",
           *rows, "",
           "The torchtune held-out points are LoRA on a bf16 base from the same table; they test the FLOP count "
           "and the consumer-class factor without the dequantize term. torchtune runs with torch.compile; rigtune "
           "does not compile, so on a GeForce card it is likely slower than the factor calibrated on torchtune.",
           "The A6000 row cannot be met with checkpointing on: the FLOPs it implies exceed the card's peak, and its "
           "30.3 GiB (against 16.2 GiB on the 4090) says checkpointing was off there; with it off the estimate is "
           f"{P.tokens_per_s(P.PlanInput(arch=arch, gpus=[48.0], card='RTX A6000', seq_len=2048, micro_batch=2, lora_r=8, quantization='none', gradient_checkpointing=False), P.card_named('RTX A6000')):,.0f} "
           "tokens/s. The point is kept as published and as set, not refitted.",
           "The datacenter factor rests on one measurement of rigtune's engine (H200). Qwen-1's LoRA rows on an "
           "A100 say it does not carry over to the A100: the estimate is 28-39% under for 7B and 14B (it is "
           "within 9% for 1.8B, whose 152k-entry vocabulary and small matmuls run further from peak). Reaching "
           "a fraction of the H200's 989 TFLOP/s is harder than of the A100's 312, so one factor for both is "
           "pessimistic on the A100; an A100 measurement of rigtune's engine would set its own factor. Until "
           "then A100 estimates err long (a run ends sooner than said), which a user can live with better than "
           "the reverse; H100, L4 and T4 share the factor untested. These points refit nothing.", "",
           f"Example: Llama-3.1-8B on one RTX 4090, seq 2,048, micro-batch 4, 3,000 examples of ~700 tokens "
           f"(2.1M tokens), 1 epoch: ~{P.tokens_per_s(example, P.card_named('RTX 4090')):,.0f} tokens/s, "
           f"{P.fmt_estimate(tokens / P.tokens_per_s(example, P.card_named('RTX 4090')))}.",
           "With gradient checkpointing off (if it fits): "
           f"{P.fmt_estimate(tokens / P.tokens_per_s(replace(example, gradient_checkpointing=False), P.card_named('RTX 4090')))}."]
    if write:
        (HERE / "THROUGHPUT.md").write_text("\n".join(out) + "\n")
        print("\n".join(out))
    return {"mae": mae, "derived": derived}


if __name__ == "__main__":
    main()
