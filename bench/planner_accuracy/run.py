"""Planner accuracy, with the points that set a constant kept apart from the points accuracy is reported on.

Two sources of points:
  points.toml      published measurements of other stacks (torchtune, the PEFT FSDP-QLoRA docs, Unsloth's
                   Hugging Face baseline, Answer.AI's fsdp_qlora, Qwen-1's profiling table, Axolotl's example
                   READMEs), each with its settings and source; the recipe keys (loss, upcast, lora_dtype,
                   targets, kernels) model that stack
  gpu_points.json  rigtune's own engine on an H200 (gpu_points.py): torch's max_memory_reserved during
                   training, which excludes the CUDA context, so the planner's peak less CUDA_CONTEXT_GIB is
                   compared with it

Calibration set: the rigtune points in CALIBRATION below. They set FRAGMENTATION (reserved over allocated at
the peak), the only memory constant fitted to measurements; this script derives it again from them and
prints it. Every other point is held out: no constant of the memory model was chosen by looking at it (the
error margin below is the size of the error on them, not a term of the model).

FIT_MARGIN (a plan "fits" only when its peak times 1 + FIT_MARGIN is within the card; "tight" when it is within
the card but not with the margin) is not a term of the memory model but the size of its error: the median of
measured / planned - 1 over the held-out `peak` and `reserved` points (derive_margin). It is checked against
the published verdicts (`kind = "verdict"`: fits or out of memory, the HF 4-bit blog's T4 table), which take
no part in deriving it.

Run: .venv/bin/python bench/planner_accuracy/run.py   (writes bench/planner_accuracy/RESULTS.md)
"""
import datetime
import json
import platform
import statistics
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from engine import planner as P  # noqa: E402

FIELDS = {"gpus", "seq_len", "micro_batch", "lora_r", "lora_targets", "lora_dropout", "lora_dtype", "optimizer",
          "gradient_checkpointing", "attn", "quantization", "double_quant", "compute_dtype", "strategy",
          "cpu_offload", "loss", "upcast", "loss_chunk", "kernels"}
CALIBRATION = {"llama8b-s2048-b1-gc", "llama8b-s1024-b1-nogc"}
# architectures of gpu_points.py's shapes that presets/models.toml does not list
EXTRA = {"Qwen3-8B": P.Arch("Qwen3-8B", 36, 4096, 12288, 32, 8, 151936, head_dim=128, qk_norm=True),
         "Llama-3.2-1B": P.Arch("Llama-3.2-1B", 16, 2048, 8192, 32, 8, 128256, tied=True),
         "Yi-34B": P.Arch("Yi-34B", 60, 7168, 20480, 56, 8, 64000),
         # Qwen-1 (remote code "qwen"; config.json's intermediate_size is twice each of w1 and w2's width)
         "Qwen-1.8B": P.Arch("Qwen-1.8B", 24, 2048, 5504, 16, 16, 151936, qkv_bias=True, fused=True),
         "Qwen-7B": P.Arch("Qwen-7B", 32, 4096, 11008, 32, 32, 151936, qkv_bias=True, fused=True),
         "Qwen-14B": P.Arch("Qwen-14B", 40, 5120, 13696, 40, 40, 152064, qkv_bias=True, fused=True),
         "Qwen-72B": P.Arch("Qwen-72B", 80, 8192, 24576, 64, 64, 152064, qkv_bias=True, fused=True),
         "Ministral-8B": P.Arch("Ministral-8B", 36, 4096, 12288, 32, 8, 131072, head_dim=128, model_type="mistral")}


def gpu_points() -> list:
    """rigtune's own runs as points (the last measurement of each id), settings as gpu_points.py ran them."""
    data = json.loads((HERE / "gpu_points.json").read_text())
    last = {r["id"]: r for r in data["runs"] if r.get("peak_gib")}
    return [{"id": rid, "kind": "reserved", "measured": r["peak_gib"], "allocated": r["peak_allocated_gib"],
             "model": r["model"], "gpus": [141.0], "seq_len": r["seq_len"], "micro_batch": r["micro_batch"],
             "gradient_checkpointing": r["gradient_checkpointing"], "lora_r": 16, "lora_dropout": 0.05,
             "loss_chunk": 4096, "kernels": "none" if r.get("kernels") == "none" else "liger",
             "set": "calibration" if rid in CALIBRATION else "held-out",
             "source": f"rigtune engine, {data['device']}, {data['date']} (gpu_points.json)"} for rid, r in last.items()]


def source_of(point: dict) -> str:
    """The stack a point was measured on, from its id."""
    if point["source"].startswith("rigtune engine"):
        return "rigtune (own engine, H200)"
    return {"torchtune": "torchtune", "peft": "PEFT docs (FSDP)", "unsloth": "Unsloth (HF + FA2 baseline)",
            "answerai": "Answer.AI fsdp_qlora", "qwen1": "Qwen-1 README (GPTQ + DeepSpeed)",
            "axolotl": "Axolotl example READMEs"}[point["id"].split("-")[0]]


def predict(point: dict, models: dict) -> float:
    inp = P.PlanInput(arch=models[point["model"]], **{k: v for k, v in point.items() if k in FIELDS})
    if point["kind"] == "peak":
        return P.peak(inp)
    if point["kind"] == "reserved":
        return P.peak(inp) - P.CUDA_CONTEXT_GIB
    return P.max_seq_len(inp, margin=0.0)  # what the memory model says fits the bare card: no FIT_MARGIN here


def points() -> list:
    published = tomllib.loads((HERE / "points.toml").read_text())["point"]
    for pt in published:
        pt.setdefault("set", "held-out")
    return published + gpu_points()


def derive_margin(pts: list, models: dict) -> float:
    """The rule for FIT_MARGIN: the median of measured / planned - 1 over the held-out peak and reserved points
    (half of them measured at most this much above the plan). Verdict points take no part."""
    return statistics.median(pt["measured"] / predict(pt, models) - 1 for pt in pts
                             if pt["set"] == "held-out" and pt["kind"] in ("peak", "reserved"))


def planned_verdict(point: dict, models: dict, margin: float | None = None) -> str:
    inp = P.PlanInput(arch=models[point["model"]], **{k: v for k, v in point.items() if k in FIELDS})
    if margin is None:
        return P.verdict(inp)
    return "fits" if P.fits(inp, margin=margin) else ("tight" if P.fits(inp, margin=0.0) else "does not fit")


def verdict_check(pts: list, models: dict) -> tuple[list, dict]:
    """Each published verdict against the planner's, with FIT_MARGIN and without it (the plan against the bare
    card, as before the margin); the counts: right, hedged (tight), wrong."""
    rows, counts = [], {}
    for pt in (p for p in pts if p["kind"] == "verdict"):
        inp = P.PlanInput(arch=models[pt["model"]], **{k: v for k, v in pt.items() if k in FIELDS})
        said, bare = planned_verdict(pt, models), planned_verdict(pt, models, margin=0.0)
        for name, v in (("with FIT_MARGIN", said), ("without a margin", bare)):
            c = counts.setdefault(name, {"right": 0, "tight": 0, "wrong": 0})
            right = (v == "fits") == (pt["measured"] == "fits")
            c["tight" if v == "tight" else ("right" if right else "wrong")] += 1
        rows.append(f"| {pt['id']} | {pt['measured']} | {P.peak(inp):.2f} of {min(pt['gpus']):g} GiB | {bare} | "
                    f"**{said}** |")
    return rows, counts


def main(write: bool = True) -> dict:
    models = {**P.load_models(), **EXTRA}
    rows, signed, errors = [], [], {"calibration": [], "held-out": []}
    pts = points()
    verdict_rows, counts = verdict_check(pts, models)
    margin = derive_margin(pts, models)
    pts = [p for p in pts if p["kind"] != "verdict"]
    for pt in pts:
        pred = predict(pt, models)
        err = (pred - pt["measured"]) / pt["measured"]
        errors[pt["set"]].append(abs(err))
        signed.append(err)
        unit = "tokens" if pt["kind"] == "max_seq_len" else "GiB"
        rows.append(f"| {pt['id']} | {pt['set']} | {pt['kind']} | {pt['measured']:g} {unit} | {pred:.1f} {unit} | "
                    f"{err:+.1%} | {pt['source']} |")
    mae = {k: sum(v) / len(v) for k, v in errors.items()}
    by_source = {}
    for pt, err in zip(pts, signed):
        if pt["set"] == "held-out":
            by_source.setdefault(source_of(pt), []).append(abs(err))
    per_source = {k: sum(v) / len(v) for k, v in by_source.items()}
    source_weighted = sum(per_source.values()) / len(per_source)
    calib = [p for p in pts if p["set"] == "calibration" and "allocated" in p]
    frag = sum(p["measured"] / p["allocated"] - 1 for p in calib) / len(calib)
    out = [
        "# Planner accuracy", "",
        f"Computed {datetime.date.today()} on {platform.node() or 'this machine'} (the planner is arithmetic; the "
        "machine does not change the figures).", "",
        f"**Held-out mean absolute error: {mae['held-out']:.1%}** over {len(errors['held-out'])} points no constant "
        f"of the memory model was fitted to (the error margin, below, is measured on them).  ",
        f"Calibration set: {mae['calibration']:.1%} over {len(errors['calibration'])} points (in-sample, not accuracy).",
        "",
        f"Held-out, each source weighted alike (so that no one table dominates): {source_weighted:.1%}.", "",
        "| source | held-out points | mean absolute error |", "|---|---|---|",
        *[f"| {k} | {len(by_source[k])} | {v:.1%} |" for k, v in per_source.items()], "",
        f"FRAGMENTATION from the calibration set: mean reserved/allocated - 1 = {frag:.3f} (the planner uses "
        f"{P.FRAGMENTATION}).", "",
        *margin_section(margin, verdict_rows, counts),
        "| point | set | kind | measured | planner | error | source |", "|---|---|---|---|---|---|---|", *rows, "",
        "Kinds: `peak` compares the planner's per-GPU peak with a published figure (nvidia-smi or the stack's own "
        "report); `reserved` compares the peak less the CUDA context with torch.cuda.max_memory_reserved of "
        "rigtune's training steps (gpu_points.json); `max_seq_len` compares the longest sequence the planner "
        "fits at micro-batch 1 with the longest the source could train.", "",
        "What the held-out errors say:",
        "- rigtune's own runs are within about 15%. The run with `kernels = \"none\"` (rigtune's chunked loss, "
        "4,096-token chunks) reserved 19.2 GiB for 12.4 GiB allocated: freeing 2-3 GiB logits chunks fragments "
        "the cache far beyond FRAGMENTATION, so the planner is under there. Liger (the default on a GPU) avoids it.",
        "- The PEFT FSDP points are under: that stack (HF Trainer, FSDP1 flat parameters with use_orig_params, "
        "transformers' loss) measured more than the planner's model of rigtune's FSDP (FSDP2 per decoder layer, "
        "engine.torchside.fsdp). The old planner matched them only through a constant fitted to these two points "
        "(FSDP_FRAGMENTATION = 0.75), now gone. No term explains the gap, and rigtune's own FSDP has not been "
        "measured on a GPU yet: treat FSDP plans as the least certain.",
        "- The Unsloth points measure the plain Hugging Face recipe (no chunked loss, fp32 upcast); modelled with "
        "its recipe keys.",
        "- torchtune's point ran with torch.compile, whose fused kernels keep less than the planner assumes.",
        "- Answer.AI's fsdp_qlora points (FSDP1, reserved memory): within 5% at 2,048 tokens and batch 1-4 on 7B "
        "and on Yi-34B; over at batch 10 (+18%); under at 512 tokens (-32%: their reserved memory barely moves "
        "between 512 and 2,048 tokens, allocator caching the planner does not model) and for the offloaded 70B "
        "(-25%, like the PEFT FSDP points).",
        "- Qwen-1's profiling table (GPTQ Int4, fp16, DeepSpeed ZeRO-2 on one A100): the slope per token matches "
        "(within 5-12% at 8,192 tokens, where the fp16 loss dominates), but at 256 tokens the planner is under by "
        "an offset that grows with the model (2.2 GiB at 1.8B, 2.5 at 7B, 4.7 at 14B, 8 at 72B). Something in that "
        "stack holds memory in proportion to the weights that rigtune's engine does not (GPTQ's CUDA kernels "
        "without exllama, DeepSpeed's fp16 buffers); the planner models rigtune's engine, so this stays an error.",
        "- Axolotl's example READMEs (NF4 QLoRA with Cut Cross Entropy and packing): within 1% and 7% on Devstral "
        "and Ministral; 15% under on Magistral, whose config differs from Devstral's only by LoRA dropout 0.05 (a "
        "little more activation memory) and 8-bit AdamW (less optimizer state): the planner puts the two 0.6 GiB "
        "apart, the READMEs 3 GB; \"about 24GB\" reads like a rounded figure.",
        "",
        "Not used: LLaMA-Factory's hardware table (README, 'Hardware Requirement') gives estimates (QLoRA 4-bit: "
        "x/2 GB for an xB model) with no sequence length, batch or settings: a rule of thumb, not a measurement. "
        "Unsloth's other benchmark tables give speed-ups and VRAM savings relative to a baseline, not absolute "
        "figures with their settings; its context-length tables are used above.",
    ]
    mae["fit_margin"] = margin
    mae["verdicts"] = counts
    if write:
        (HERE / "RESULTS.md").write_text("\n".join(out) + "\n")
        print("\n".join(out))
    return mae


def margin_section(margin: float, verdict_rows: list, counts: dict) -> list:
    said = "; ".join(f"{k}: {v['right']} right, {v['tight']} tight, {v['wrong']} wrong" for k, v in counts.items())
    return [
        f"FIT_MARGIN from the held-out peak and reserved points: median of measured / planned - 1 = {margin:.3f} "
        f"(the planner uses {P.FIT_MARGIN}). A plan fits when its peak x (1 + FIT_MARGIN) is within the card; "
        "within the card but not with the margin it is \"tight\" (it may run out of memory).", "",
        "Published verdicts (not used to derive the margin): the planner's verdict against the bare card (as before "
        "the margin) and with FIT_MARGIN. \"right\" = fits where it ran, does not fit where it ran out of memory; "
        f"\"tight\" says neither. {said}.", "",
        "| point | published | planned peak | without a margin | with FIT_MARGIN |", "|---|---|---|---|---|",
        *verdict_rows, "",
        "The LoRA settings of the blog's runs are not published (peft's defaults assumed, see points.toml). "
        "hfblog-t4-13b-nf4-gc-1024 ran out of memory at a plan of under 10 GiB of 15: the planner misses something "
        "of that run (the same settings with nested quantization, 0.6 GiB less, ran), and no margin derived from "
        "the peaks would cover it.", ""]


if __name__ == "__main__":
    main()
