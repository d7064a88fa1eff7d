"""The GPU checks of issues 7 and 8 as one prepared script, for a session that has the device (one H200).

  A. speed: rigtune against the HF Trainer + PEFT recipe (bench/speed/hf_recipe.py) on a random-init
     Llama-3.2-1B shape, 400 alpaca rows, seq 2048, micro-batch 4, NF4, bf16: wall time, trained tokens/s,
     max_memory_reserved, and model-FLOPs utilisation (6 x linear params x tokens/s against the card's bf16
     dense peak).
  B. FSDP with one process on a random-init Llama-3.1-8B shape, with and without cpu_offload: the load
     (rank 0 quantizes, shards are scattered), a few steps, the adapter saved and loaded back with peft,
     and the measured peak against the planner's.

Random weights do not change memory or speed. Nothing is downloaded. Results go to bench/gpu/RESULTS.md and,
when $OUT is set, to $OUT/RESULTS.md. `--shape tiny` runs the same on the CPU in a few minutes (a dry run).

  python bench/gpu/run.py                 # on the GPU box, about 8 minutes
  python bench/gpu/run.py --shape tiny    # here, to check the script (it was, 2026-11-28)

On the device (its image has torch, transformers, peft, accelerate; nothing can be fetched there): download
the wheels here first (`pip download --no-deps bitsandbytes tomli-w orjson liger-kernel -d .wheels`, with
`.wheels` in .git/info/exclude), carry `.wheels`, and run
`pip install --no-deps .wheels/*.whl && PYTHONPATH=. python3 bench/gpu/run.py` with ../shared/peer-data's
alpaca file copied into the carried folder too (`PEER` below reads RIGTUNE_PEER_ALPACA when set).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable
PEER = Path(os.environ.get("RIGTUNE_PEER_ALPACA", ROOT.parent / "shared" / "peer-data" / "alpaca_en_demo.json"))
_spec = importlib.util.spec_from_file_location("speed_run", HERE.parent / "speed" / "run.py")
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)

SHAPES = {  # (hidden, layers, heads, kv_heads, intermediate, vocab)
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=688, vocab_size=2000),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256),
}
H200_BF16_TFLOPS = 989.0  # dense bf16 peak of the card (the device notes measure ~790 in practice)


def build(out: Path, shape: str, texts: list, device: str) -> tuple[Path, int]:
    """A random-init Llama of `shape` with a small local BPE tokenizer; returns (folder, linear params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.torchside.tiny import build_tokenizer
    tok = build_tokenizer(texts, 2000)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    linear = cfg.num_hidden_layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    del model
    return out, linear


def rigtune_run(tmp: Path, name: str, model_dir: Path, data: Path, device: str, seq: int, hardware: dict,
                train: dict) -> dict:
    from engine import runfile
    rf = tmp / f"{name}.toml"
    runfile.save(runfile.defaults(
        name=name, output_root=str(tmp / "runs"), hardware=hardware,
        model={"base": str(model_dir), "compute_dtype": "bfloat16" if device == "cuda" else "float32"},
        lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        data={"path": str(data), "max_seq_len": seq, "eval_fraction": 0.0},
        train={"micro_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "seed": 42,
               "gradient_checkpointing": False, "eval_every_steps": 0, "save_every_steps": 0,
               "sample_max_new_tokens": 0, "log_every_steps": 1, "optimizer": "adamw_torch", **train}), rf)
    r = speed.timed([PY, "-m", "tui.cli", "train", str(rf), "--no-tui"], dict(os.environ), ROOT)
    run_dir = tmp / "runs" / name
    evs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [e for e in evs if e["event"] == "step"]
    start = next(e for e in evs if e["event"] == "start")
    memory = next((e for e in evs if e["event"] == "memory"), {})
    plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").exists() else {}
    train_s = steps[-1]["time"] - start["time"] if steps else 0.0
    return {"wall": r["wall"], "rss_gib": r["rss_gib"], "steps": len(steps), "kernels": start.get("kernels"),
            "tokens": sum(e["tokens"] for e in steps), "train_s": train_s,
            "load_s": start["time"] - (run_dir / "run.toml").stat().st_mtime,
            "peak_gib": memory.get("peak_gib"), "planned_gib": plan.get("per_gpu_peak_gib"), "run_dir": run_dir}


def adapter_loads(model_dir: Path, adapter: Path) -> bool:
    code = ("import sys, torch; from peft import PeftModel; from transformers import AutoModelForCausalLM, "
            "BitsAndBytesConfig; dev = 'cuda' if torch.cuda.is_available() else 'cpu'; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], device_map={'': dev}, "
            "quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4')); "
            "PeftModel.from_pretrained(m, sys.argv[2]); print('ok')")
    res = subprocess.run([PY, "-c", code, str(model_dir), str(adapter)], capture_output=True, text=True)
    return res.returncode == 0 and "ok" in res.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["tiny", "full"], default="full",
                    help="full: 1B for speed, 8B for FSDP (GPU); tiny: the same steps on the CPU")
    ap.add_argument("--fsdp-steps", type=int, default=4)
    args = ap.parse_args()
    import torch
    device = "cuda" if torch.cuda.is_available() and args.shape == "full" else "cpu"
    speed_shape, fsdp_shape = ("1b", "8b") if args.shape == "full" else ("tiny", "tiny")
    seq = 2048 if args.shape == "full" else 512
    rows = json.loads(PEER.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="rigtune-gpu-"))
    (tmp / "train.json").write_text(json.dumps(rows[:400]))
    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in rows[:500]]
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", BENCH_DEVICE=device)
    gpus = [0] if device == "cuda" else []
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
    lines = ["# GPU checks: speed against the HF recipe, and FSDP with one process", "",
             f"Measured {datetime.date.today()} on {name} ({platform.node()}), torch {torch.__version__}, by "
             f"`bench/gpu/run.py --shape {args.shape}`. Random-init weights; nothing downloaded.", ""]

    # A. speed
    t0 = time.time()
    model_dir, linear = build(tmp / f"model-{speed_shape}", speed_shape, texts, device)
    print(f"built the {speed_shape} model in {time.time() - t0:.0f} s", flush=True)
    rig = rigtune_run(tmp, "speed", model_dir, tmp / "train.json", device, seq, {"gpus": gpus}, {"epochs": 1})
    hf_out = tmp / "hf"
    h = speed.timed([PY, str(HERE.parent / "speed" / "hf_recipe.py"), str(model_dir), str(tmp / "train.json"),
                     str(hf_out), str(seq), "4", "2e-4", str(ROOT)], dict(os.environ), ROOT)
    info = json.loads([x for x in h["stdout"].splitlines() if x.startswith("{")][-1])
    tok_s = {"rigtune": info["trained_tokens"] / rig["wall"], "hf": info["trained_tokens"] / h["wall"]}
    mfu = {k: 6 * linear * v / (H200_BF16_TFLOPS * 1e12) for k, v in tok_s.items()}
    lines += [f"## A. Speed: {speed_shape} shape, 400 alpaca rows, seq {seq}, micro-batch 4, NF4 QLoRA r16", "",
              "| | rigtune | HF Trainer + PEFT | ratio |", "|---|---|---|---|",
              f"| whole-process wall time | {rig['wall']:.1f} s | {h['wall']:.1f} s | **{h['wall'] / rig['wall']:.2f}x** |",
              f"| trained tokens / s (wall) | {tok_s['rigtune']:,.0f} | {tok_s['hf']:,.0f} | |",
              f"| max_memory_reserved | {rig['peak_gib']} GiB | {info.get('peak_gib')} GiB | |",
              f"| MFU (6N x trained tokens/s over {H200_BF16_TFLOPS:g} TFLOP/s) | {mfu['rigtune']:.1%} | "
              f"{mfu['hf']:.1%} | |",
              f"| optimizer steps | {rig['steps']} | {info['steps']} | |", "",
              f"rigtune's kernels: {rig['kernels']}; planner's estimate for rigtune: {rig['planned_gib']} GiB.", ""]
    shutil.rmtree(model_dir, ignore_errors=True)

    # B. FSDP, one process
    t0 = time.time()
    model_dir, _ = build(tmp / f"model-{fsdp_shape}", fsdp_shape, texts, device)
    print(f"built the {fsdp_shape} model in {time.time() - t0:.0f} s", flush=True)
    lines += [f"## B. FSDP, one process, {fsdp_shape} shape, seq {seq}, micro-batch 4, {args.fsdp_steps} steps", "",
              "| cpu_offload | load s | s / step | max_memory_reserved | planner | peak RSS | adapter loads |",
              "|---|---|---|---|---|---|---|"]
    for offload in (False, True):
        r = rigtune_run(tmp, f"fsdp-{offload}".lower(), model_dir, tmp / "train.json", device, seq,
                        {"gpus": gpus, "strategy": "fsdp", "num_processes": 1, "cpu_offload": offload},
                        {"max_steps": args.fsdp_steps, "optimizer": "adamw_8bit"})
        loads = adapter_loads(model_dir, r["run_dir"] / "adapter")
        per_step = r["train_s"] / max(1, r["steps"])
        lines.append(f"| {offload} | {r['load_s']:.0f} | {per_step:.2f} | {r['peak_gib']} GiB | "
                     f"{r['planned_gib']} GiB | {r['rss_gib']:.1f} GiB | {loads} |")
    text = "\n".join(lines) + "\n"
    if args.shape == "full":  # a dry run on the CPU only prints
        (HERE / "RESULTS.md").write_text(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "RESULTS.md").write_text(text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
