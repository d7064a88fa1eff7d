"""DPO's two ways to hold the reference, measured on the CPU demo's DPO run, written to RESULTS.md (its
"dpo-reference" section; the other sections are kept):

  precomputed  what rigtune does: the starting model's log-probabilities of every training and held-out pair,
               computed once before the first step (inside step 1), kept in the run directory
  live         the starting model's forward on each micro-batch's pairs inside every step (and at each eval):
               live_reference.py, a bench-only subclass of the engine's Preference run through the same trainer

Both run the DPO demo's run file as `rigtune demo --method dpo` does (presets/cpu-demo-dpo.toml: its evals at
steps 40 and 80, checkpoints, samples), from the CPU demo's SFT adapter, each as the trainer's own process
(`python -m engine.torchside.trainer RUN_DIR` or `python bench/speed/live_reference.py RUN_DIR`), alternating.
Measured: whole-process wall time and peak RSS, each step's seconds from its step event (step 1 of the
precomputed run includes the precompute), the losses (the two should agree: the same reference numbers) and
the held-out pref_accuracy of the final eval. Then, since this machine has no GPU, what each costs on a 24 GB
card for an 8B, from the planner's own terms (engine/planner).

Run: .venv/bin/python bench/speed/dpo_reference.py [--repeat 2] [--sft-adapter RUN_DIR]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
from pathlib import Path

from dpo_setup import HERE, PY, ROOT, bench_env, company, dpo_values, events, sft_adapter, timed_alone

MODES = {"precomputed": ["-m", "engine.torchside.trainer"], "live": [str(HERE / "live_reference.py")]}


def run_mode(tmp: Path, mode: str, i: int, start: Path) -> dict:
    from engine import launch, runfile

    def argv(attempt: int) -> list:
        cfg = runfile.validate(dpo_values(f"{mode}{i}-{attempt}", tmp / "runs", start))
        return [PY, *MODES[mode], str(launch.prepare_run_dir(cfg, False))]

    r = timed_alone(argv, bench_env(), ROOT)
    run_dir = tmp / "runs" / f"{mode}{i}-{r['tries']}"
    evs = events(run_dir)
    steps = [e for e in evs if e["event"] == "step"]
    seconds = [e["tokens"] / e["tokens_per_s"] for e in steps]
    final = [e for e in evs if e["event"] == "eval"][-1]
    cache = run_dir / "reference_logps.json"
    r.update(steps=len(steps), step1=seconds[0], median=statistics.median(seconds[1:]), training=sum(seconds),
             losses=[e["loss"] for e in steps], acc=final["pref_accuracy"], base=final["base_pref_accuracy"],
             cached=cache.stat().st_size if cache.exists() else 0)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sft-adapter", help="the CPU demo's finished run (default: runs/cpu-demo, else trained now)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rigtune-dporef-"))
    start, how = sft_adapter(tmp, args.sft_adapter)
    results = {m: [] for m in MODES}
    for i in range(args.repeat):
        for mode in MODES:
            r = run_mode(tmp, mode, i, start)
            results[mode].append(r)
            print(mode, {k: r[k] for k in ("wall", "rss_gib", "step1", "median", "training", "acc", "base")},
                  flush=True)
    write(args, results, how)


def middle(rs, key) -> float:
    """The median over the runs: this shared CPU's load comes and goes, and a busy moment lands on one run."""
    return statistics.median(r[key] for r in rs)


def write(args, results, how) -> None:
    pre, live = results["precomputed"], results["live"]
    drift = max(abs(a - b) for p, q in zip(pre, live) for a, b in zip(p["losses"], q["losses"]))
    m = {s: {k: middle(rs, k) for k in ("wall", "rss_gib", "step1", "median", "training", "acc")}
         for s, rs in results.items()}
    precompute_s = m["precomputed"]["step1"] - m["precomputed"]["median"]
    lines = [
        "## DPO: the reference precomputed once, or live in every step", "",
        f"Measured 2026-12-05 on {platform.node()} (this 2-core CPU VM: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"no GPU, Python {platform.python_version()}), both in one run of `bench/speed/dpo_reference.py`, "
        f"alternating, {args.repeat} run(s) each; recorded {datetime.date.today()}. The CPU demo's DPO run "
        f"(presets/cpu-demo-dpo.toml as `rigtune demo --method dpo` runs it: {pre[0]['steps']} steps of 4 pairs, "
        "evals at steps 40 and 80, checkpoints, samples) from the CPU demo's SFT adapter "
        f"({how}); each mode is the trainer's own process. live: `bench/speed/live_reference.py`, the engine's "
        "Preference with reference_scores fed by the starting model's forward (pref.starting_model) on the "
        "step's pairs right before the policy's forward; no engine change.", "",
        f"Medians over the {args.repeat} runs of each mode (per run below). This VM's two cores are shared with "
        "other jobs: each timed run waits until no other process is busy, and is run again when one became busy "
        "during it (dpo_setup.timed_alone).", "",
        "| | precomputed (rigtune) | live reference |", "|---|---|---|",
        f"| whole-process wall time | {m['precomputed']['wall']:.1f} s | {m['live']['wall']:.1f} s |",
        f"| time in training steps (sum of step events) | {m['precomputed']['training']:.1f} s | "
        f"{m['live']['training']:.1f} s |",
        f"| a step (median of steps 2-{pre[0]['steps']}) | {m['precomputed']['median'] * 1000:.0f} ms | "
        f"{m['live']['median'] * 1000:.0f} ms |",
        f"| step 1 | {m['precomputed']['step1']:.2f} s (with the precompute of all {160 + 16} pairs) | "
        f"{m['live']['step1']:.2f} s |",
        f"| peak RSS (whole process) | {m['precomputed']['rss_gib']:.3f} GiB | {m['live']['rss_gib']:.3f} GiB |",
        f"| held-out pref_accuracy (starting model: {pre[0]['base']:.2f}) | {m['precomputed']['acc']:.2f} | "
        f"{m['live']['acc']:.2f} |", "",
        f"The precompute takes about {precompute_s:.2f} s here (step 1 less a median step); a live step takes "
        f"{m['live']['median'] / m['precomputed']['median']:.2f}x a precomputed one, and the run's steps "
        f"{m['live']['training'] / m['precomputed']['training']:.2f}x as long in all. The two modes' losses "
        f"differ by at most {drift:.1e} at any step (the same reference numbers, batched differently).", "",
        "Per run:", "",
    ]
    for mode, rs in results.items():
        for r in rs:
            kept = f"{r['cached'] / 1024:.1f} KiB" if r["cached"] else "none"
            lines.append(f"- {mode}: {r['wall']:.1f} s, {r['rss_gib']:.3f} GiB, steps {r['training']:.1f} s (step 1 "
                         f"{r['step1']:.2f} s, median {r['median'] * 1000:.0f} ms), pref_accuracy {r['acc']:.2f}, "
                         f"reference_logps.json {kept}" + company(r))
    lines += ["", *gpu_costs()]
    from results import write_section
    write_section("dpo-reference", lines)
    print("\n".join(lines))


def gpu_costs() -> list:
    """What each way costs on one 24 GB card (RTX 4090) for Llama-3.1-8B, from the planner's own terms."""
    from engine import planner as P
    card = P.card_named("RTX 4090")
    arch = P.resolve_model("Llama-3.1-8B")
    inp = P.PlanInput(arch=arch, gpus=[24.0], seq_len=2048, micro_batch=1, optimizer="adamw_8bit",
                      gradient_checkpointing=True, compute_dtype="bfloat16", loss_chunk=4096, kernels="liger",
                      card="RTX 4090", rows_per_item=2, lora_dropout=0.0)
    inp = P.replace(inp, micro_batch=P.max_micro_batch(inp))
    terms = P.breakdown(inp)
    tokens = inp.seq_len * inp.micro_batch * inp.rows_per_item
    adapter_gib = P.adapter_params(inp) * P.DTYPE_BYTES[inp.lora_dtype] / P.GIB
    layer_gib = P.breakdown(P.replace(inp, activation_offload=True))["activations"]
    logits_gib = min(tokens, inp.loss_chunk) * arch.vocab * (2 + 4 + 4) / P.GIB   # bf16, its fp32 copy, log-softmax
    step = P.micro_batch_seconds(inp, card)
    # one no-grad forward: each matmul once (base, adapters, attention over s/2 positions on average, the head),
    # and one pass of dequantizing the 4-bit weights (the training step has three with checkpointing)
    flops = (2 * (arch.linear_params + arch.active_expert_params) + 2 * P.adapter_params(inp)
             + 2 * 2 * (inp.seq_len / 2) * arch.q_dim * arch.layers + 2 * arch.vocab * arch.hidden)
    forward = tokens * flops / (card.achieved_tflops * 1e12) + step["dequantize"] / 3
    return [
        f"On a 24 GB card (planner, not measured: this task had no GPU). Llama-3.1-8B, NF4, r 16 all-linear, "
        f"seq 2048, gradient checkpointing, AdamW 8-bit, Liger, the largest micro-batch of pairs that fits: "
        f"{inp.micro_batch} pair(s), {tokens} tokens per forward; planned peak {sum(terms.values()):.1f} GiB "
        f"(activations {terms['activations']:.2f}, logits {terms['logits']:.2f}).",
        "",
        f"- A frozen second adapter holds the starting adapter's {P.adapter_params(inp) / 1e6:.1f}M LoRA parameters "
        f"again: **{adapter_gib * 1024:.0f} MiB** in fp32 ({adapter_gib * 512:.0f} MiB in bf16) on the card for the "
        "whole run. rigtune keeps that copy in CPU RAM (run.initial_adapter, for the precompute and the final "
        "base_pref_accuracy), not in VRAM.",
        f"- The live forward in no-grad saves nothing for backward; its transient is at most about one layer's "
        f"working set, **{layer_gib:.2f} GiB** (the planner's saved-tensor term of one layer at {tokens} tokens: an "
        "upper bound for a layer that frees its intermediates as it goes), plus a chunk "
        f"of the head's logits as rigtune computes log-probabilities (4096 tokens x 128,256 vocab in bf16, fp32 "
        f"and log-softmax: **{logits_gib:.1f} GiB**). Run before the policy's forward (as live_reference.py "
        "does) it stays under the step's peak; run after it while the policy's activations are held (TRL's order) "
        f"it adds up to about {layer_gib + logits_gib:.1f} GiB to a {sum(terms.values()):.1f} GiB peak.",
        f"- Time: the live forward is one more forward pass per micro-batch, about **{forward:.2f} s** against "
        f"{sum(step.values()):.2f} s for the training micro-step (+{forward / sum(step.values()):.0%}), in every "
        "epoch. Precomputing costs that forward once per pair for the whole run (before step 1), and the "
        "held-out pairs once instead of at every eval: the same time as live for one epoch, less for more.",
        f"- Both modes alike (not a difference between them, but a planner gap this bench found): the policy's "
        "own log-probabilities (engine/torchside/methods/logps.py) keep every chunk's fp32 log-softmax for "
        f"backward, {arch.vocab * 4 / 2**20:.2f} MiB per trained answer token at this vocab (1,000-token answers: "
        f"{2 * inp.micro_batch * 1000 * arch.vocab * 4 / P.GIB:.1f} GiB at {inp.micro_batch} pairs), where SFT's "
        "chunked loss recomputes one chunk at a time; the planner's logits term above (Liger's) does not count "
        "it for DPO.",
    ]


if __name__ == "__main__":
    main()
