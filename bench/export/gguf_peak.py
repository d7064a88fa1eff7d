"""Peak RSS of `export --to gguf`'s writer (engine.torchside.gguf_export.write_model) on a full-width 2-layer
Llama-3.1-8B copy, before and after streaming, beside the process baseline, in one run.

usage: .venv/bin/python bench/export/gguf_peak.py [WORK_DIR]   (needs about 6 GB free there; removed afterwards)

The model: Llama-3.1-8B's numbers (hidden 4096, intermediate 14336, 32 heads, 8 kv heads, vocab 128256,
rope_theta 500000, llama3 RoPE scaling) cut to 2 layers, random bf16 weights in one safetensors file, with a small
BPE tokenizer (ids above it are padded in the GGUF). Its largest tensors, the embedding and lm_head, are
128256 x 4096: 1 GiB each in bf16 (and in the f16 GGUF). Each measurement is its own process under
/usr/bin/time -v:
  baseline  imports what the writer imports (torch, gguf, safetensors, numpy, rigtune's modules), writes nothing
  before    the writer as of commit BEFORE (every tensor held until the end), f16
  after     the writer in the working tree (streamed), f16
"""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BEFORE = "7306ced"  # the last commit that wrote GGUF with every tensor in memory
MiB = 1 << 20


def build(folder: Path) -> int:
    """The model folder; returns the largest tensor's size in bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from engine.torchside.tiny import build_tokenizer
    texts = [json.loads(x)["output"] for x in (ROOT / "presets" / "demo.jsonl").read_text().splitlines()]
    tok = build_tokenizer(texts, 400)
    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    tok.save_pretrained(folder)
    h, i, kv = 4096, 14336, 8 * 128
    shapes = {"model.embed_tokens.weight": (128256, h), "lm_head.weight": (128256, h), "model.norm.weight": (h,)}
    for n in range(2):
        p = f"model.layers.{n}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                   p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                   p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                   p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                   p + "post_attention_layernorm.weight": (h,)}
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return max(t.nbytes for t in tensors.values())


def child(which: str, folder: Path, out: Path) -> None:
    """One measured process."""
    import gguf  # noqa: F401
    import numpy  # noqa: F401
    import safetensors  # noqa: F401
    import torch  # noqa: F401

    import engine.torchside.gguf_export as after
    if which == "baseline":
        return
    module = after
    if which == "before":
        source = subprocess.run(["git", "show", f"{BEFORE}:engine/torchside/gguf_export.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        spec = importlib.util.spec_from_loader("engine.torchside._gguf_before", loader=None)
        module = importlib.util.module_from_spec(spec)
        exec(compile(source, "gguf_export.py@" + BEFORE, "exec"), module.__dict__)
    module.write_model(folder, out, "f16", progress=lambda line: None)


def peak(which: str, folder: Path, out: Path) -> int:
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, "--child", which, str(folder), str(out)],
                         cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{which} failed:\n{res.stderr[-3000:]}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1)) * 1024


def same_tensors(work: Path) -> bool:
    import gguf
    import numpy as np
    before = {t.name: t for t in gguf.GGUFReader(work / "before.gguf").tensors}
    after = {t.name: t for t in gguf.GGUFReader(work / "after.gguf").tensors}
    return set(after) - {"rope_freqs.weight"} == set(before) and all(
        before[n].tensor_type == after[n].tensor_type and np.array_equal(before[n].data, after[n].data)
        for n in before)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gguf-peak-", dir=sys.argv[1] if len(sys.argv) > 1 else None))
    try:
        folder = work / "model"
        largest = build(folder)
        rows = [(w, peak(w, folder, work / f"{w}.gguf")) for w in ("baseline", "before", "after")]
        size = (work / "after.gguf").stat().st_size
        base = rows[0][1]
        print(f"largest tensor: {largest / MiB:.0f} MiB; f16 GGUF: {size / MiB:.0f} MiB")
        for w, p in rows:
            print(f"{w:8s} peak RSS {p / MiB:7.0f} MiB   over baseline {(p - base) / MiB:7.0f} MiB")
        limit = (base + largest) * 1.25
        print(f"acceptance: after <= (baseline + largest) x 1.25 = {limit / MiB:.0f} MiB: "
              f"{'yes' if rows[2][1] <= limit else 'NO'}")
        print(f"after's tensors equal before's (rope_freqs.weight aside): {same_tensors(work)}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
