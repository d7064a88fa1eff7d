"""Measure rigtune's own engine on a GPU: the training peak (max_memory_reserved after the load, which the
planner predicts) and the steady tokens/s, at real architecture shapes with random weights (weights change
neither memory nor speed). Each run is `rigtune train` on a run file, exactly as a user starts it.

Writes gpu_points.json (here, and under $OUT when set). bench/planner_accuracy/run.py reads it as the
"rigtune engine" points, and bench/planner_accuracy/throughput.py reads the tokens/s.

  python bench/planner_accuracy/gpu_points.py               # on a GPU box, about 6 minutes on an H200
  python bench/planner_accuracy/gpu_points.py --shape tiny  # here, on the CPU: checks the script only

On the lent device nothing can be fetched: carry bitsandbytes, tomli-w, orjson and liger-kernel as wheels
(.whl), and ../shared/peer-data's alpaca file in .devdata (RIGTUNE_PEER_ALPACA).
"""
from __future__ import annotations

import argparse
import datetime
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
PEER = Path(os.environ.get("RIGTUNE_PEER_ALPACA", ROOT.parent / "shared" / "peer-data" / "alpaca_en_demo.json"))

SHAPES = {  # the configs of the real models (config.json on the hub), built with random weights
    "Llama-3.1-8B": ("llama", dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                   tie_word_embeddings=False, rope_theta=500000.0)),
    "Qwen3-8B": ("qwen3", dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                               head_dim=128, intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False,
                               rope_theta=1000000.0)),
    "Llama-3.2-1B": ("llama", dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                   tie_word_embeddings=True, rope_theta=500000.0)),
    "tiny": ("llama", dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=688, vocab_size=2000, tie_word_embeddings=False)),
}
# (id, model, seq_len, micro_batch, gradient_checkpointing, extra [train] keys)
RUNS = [
    ("llama8b-s2048-b1-gc", "Llama-3.1-8B", 2048, 1, True, {}),
    ("llama8b-s2048-b4-gc", "Llama-3.1-8B", 2048, 4, True, {}),
    ("llama8b-s4096-b2-gc", "Llama-3.1-8B", 4096, 2, True, {}),
    ("llama8b-s1024-b1-nogc", "Llama-3.1-8B", 1024, 1, False, {}),
    ("llama8b-s2048-b2-gc-nokernels", "Llama-3.1-8B", 2048, 2, True, {"kernels": "none"}),
    ("qwen3-8b-s2048-b2-gc", "Qwen3-8B", 2048, 2, True, {}),
    ("llama1b-s2048-b4-gc", "Llama-3.2-1B", 2048, 4, True, {}),
    ("llama1b-s1024-b8-nogc", "Llama-3.2-1B", 1024, 8, False, {}),
]


def build(out: Path, model: str, texts: list, device: str) -> Path:
    import torch
    import transformers

    from engine.torchside.tiny import build_tokenizer
    family, shape = SHAPES[model]
    tok = build_tokenizer(texts, 2000)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[family]
    cfg = cls[0](**shape, max_position_embeddings=8192, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id)
    with torch.device(device):
        m = cls[1](cfg).to(torch.bfloat16 if device == "cuda" else torch.float32)
    m.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    del m
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def run_one(tmp: Path, rid: str, model_dir: Path, data: Path, device: str, seq: int, mbs: int, gc: bool,
            extra: dict, steps: int) -> dict:
    from engine import runfile
    rf = tmp / f"{rid}.toml"
    runfile.save(runfile.defaults(
        name=rid, output_root=str(tmp / "runs"), hardware={"gpus": [0] if device == "cuda" else []},
        model={"base": str(model_dir), "compute_dtype": "bfloat16" if device == "cuda" else "float32"},
        lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        data={"path": str(data), "max_seq_len": seq, "eval_fraction": 0.0, "packing": True},
        train={"micro_batch_size": mbs, "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "seed": 42,
               "gradient_checkpointing": gc, "eval_every_steps": 0, "save_every_steps": 0, "max_steps": steps,
               "sample_max_new_tokens": 0, "log_every_steps": 1, "optimizer": "adamw_torch", **extra}), rf)
    t = time.time()
    res = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(rf), "--no-tui"], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.time() - t
    run_dir = tmp / "runs" / rid
    metrics = run_dir / "metrics.jsonl"
    evs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    out = {"id": rid, "rc": res.returncode, "wall_s": round(wall, 1), "seq_len": seq, "micro_batch": mbs,
           "gradient_checkpointing": gc, **extra}
    if res.returncode != 0:
        out["error"] = (res.stdout[-1500:] + res.stderr[-2500:])
        return out
    step_evs = [e for e in evs if e["event"] == "step"]
    start = next(e for e in evs if e["event"] == "start")
    mem = next((e for e in evs if e["event"] == "memory"), {})
    steady = step_evs[2:] or step_evs  # the first steps warm up kernels and the allocator
    tok_s = sorted(e["tokens_per_s"] for e in steady)
    out.update(kernels=start.get("kernels"), steps=len(step_evs), tokens_per_step=step_evs[-1]["tokens"],
               tokens_per_s=tok_s[len(tok_s) // 2], peak_gib=mem.get("peak_gib"),
               peak_allocated_gib=mem.get("peak_allocated_gib"), load_peak_gib=mem.get("load_peak_gib"),
               losses=[e["loss"] for e in step_evs])
    shutil.rmtree(run_dir, ignore_errors=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["full", "tiny"], default="full")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated run ids (default: all)")
    args = ap.parse_args()
    import bitsandbytes
    import torch
    import transformers
    device = "cuda" if torch.cuda.is_available() and args.shape == "full" else "cpu"
    rows = json.loads(PEER.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="rigtune-points-"))
    (tmp / "train.json").write_text(json.dumps(rows))
    texts = [r["instruction"] + " " + r["input"] + " " + r["output"] for r in rows[:500]]
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = {"date": str(datetime.date.today()), "host": platform.node(),
              "device": torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()} CPU",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "bitsandbytes": bitsandbytes.__version__, "lora": "r16 alpha 32 dropout 0.05 all-linear",
              "optimizer": "adamw_torch", "steps_per_run": args.steps, "runs": []}
    built = {}
    from engine.torchside.attention import varlen_call
    result["packed_attention"] = ("varlen_attn" if device == "cuda" and varlen_call() else
                                  "masked sdpa" if device == "cuda" else "per-example sdpa")
    only = set(filter(None, args.only.split(",")))
    for rid, model, seq, mbs, gc, extra in RUNS:
        if only and rid not in only:
            continue
        if args.shape == "tiny":
            model, seq = "tiny", seq // 8
        if model not in built:
            for old in built.values():
                shutil.rmtree(old, ignore_errors=True)
            t = time.time()
            built = {model: build(tmp / model, model, texts, device)}
            print(f"built {model} in {time.time() - t:.0f} s", flush=True)
        r = run_one(tmp, rid, built[model], tmp / "train.json", device, seq, mbs, gc, extra, args.steps)
        r["model"] = model
        result["runs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
        text = json.dumps(result, indent=1)
        if args.shape == "full":
            (HERE / "gpu_points.json").write_text(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "gpu_points.json").write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
