"""4-bit MoE experts (engine.torchside.experts) measured on this CPU: bytes, the load's peak memory, and speed.

Each model is its published config.json (tests/fixtures/configs) cut to two decoder layers at full width and
vocabulary, with random weights written the way the hub ships them: Qwen3-30B-A3B one tensor per expert
(`mlp.experts.N.gate_proj.weight`, ...), which transformers fuses on loading; gpt-oss-20b its experts in MXFP4
(`*_blocks`, `*_scales`, quantization_config mxfp4); Gemma-4-26B-A4B (its text model) fused 3-D tensors.

  expert bytes  the packed experts of the 2-layer model loaded by engine.torchside.model.load_base (NF4), against
                the planner's expert term for the same two layers (engine.planner.memory.expert_bytes, its 4-bit
                matrices; biases and routers are in the compute dtype in both and left out of both)
  load memory   load_base in a fresh process, NF4 experts vs experts in 16 bits (quantization = "none"; for
                gpt-oss transformers' own MXFP4 dequantization), compute dtype bfloat16 as on a GPU: the peak of
                the process's anonymous memory (RssAnon, sampled every 5 ms: what the weights take; the
                safetensors files are mapped and their pages would count in VmHWM, given too) and the load time
  speed         one MoE block's experts at full width, forward and backward (input gradient; the experts are
                frozen) for 256 tokens routed top-k at random, float32 compute (bf16 matmuls are very slow on
                this CPU): the 4-bit experts (one expert dequantized at a time, again in backward) against the
                same weights unquantized in transformers' eager loop and in its default grouped_mm, median of 5
                after a warm-up, the three interleaved round by round in one process. A whole 2-layer model in fp32
                would need 7-10 GB beside the other jobs of this 23 GB machine; the attention and embeddings are
                the same in every variant, so the block is where they differ.

Run: .venv/bin/python bench/moe_experts/run.py [--only NAME]   (writes RESULTS.md beside it unless --only; the
     checkpoints go to a temporary folder, 3-6 GB each, removed after; ~10 minutes on 2 cores)
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
CONFIGS = ROOT / "tests" / "fixtures" / "configs"
LAYERS, TOKENS, REPS = 2, 256, 5
MODELS = {"Qwen3-30B-A3B": "per-expert", "gpt-oss-20b": "mxfp4", "Gemma-4-26B-A4B": "fused"}
EXPERTS_CLASS = {"qwen3_moe": ("qwen3_moe", "Qwen3MoeExperts"), "gpt_oss": ("gpt_oss", "GptOssExperts"),
                 "gemma4_text": ("gemma4", "Gemma4TextExperts")}


def text_config(name: str) -> dict:
    """The published config (its text model's, for a wrapper) cut to LAYERS decoder layers."""
    config = json.loads((CONFIGS / f"{name}.json").read_text())
    text = dict(config.get("text_config") or config)
    text["num_hidden_layers"] = LAYERS
    if "layer_types" in text:
        kinds = list(dict.fromkeys(text["layer_types"]))  # one layer of each kind where they differ
        text["layer_types"] = (kinds * LAYERS)[:LAYERS]
    text.pop("num_kv_shared_layers", None)
    return text


def write_checkpoint(name: str, folder: Path) -> None:
    """Random bf16 weights in the layout the hub ships (see the module docstring), one shard per layer."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM
    text = text_config(name)
    layout = MODELS[name]
    config = AutoConfig.for_model(**text)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shards, index = {}, {}
    for key, (shape, dtype) in shapes.items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        layer = key.split(".")[2] if key.startswith("model.layers.") else "rest"
        shards.setdefault(layer, []).append((key, shape, dtype))
    for layer, keys in shards.items():
        tensors = {}
        for key, shape, dtype in keys:
            for k, t in hub_tensors(key, shape, dtype, layout, g).items():
                tensors[k] = t
        fname = f"model-{layer}.safetensors"
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        index.update({k: fname for k in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    if layout == "mxfp4":
        text["quantization_config"] = json.loads((CONFIGS / f"{name}.json").read_text())["quantization_config"]
    (folder / "config.json").write_text(json.dumps({**text, "architectures": [type(model).__name__]}))


def hub_tensors(key: str, shape: tuple, dtype, layout: str, g) -> dict:
    import torch
    rand = lambda s: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16)
    if not dtype.is_floating_point:
        return {key: torch.zeros(shape, dtype=dtype)}
    if "norm" in key and len(shape) == 1:
        return {key: torch.ones(shape, dtype=torch.bfloat16)}
    fused = key.endswith(("experts.gate_up_proj", "experts.down_proj"))
    if fused and layout == "per-expert":
        experts, rows, cols = shape
        base = key.rsplit(".", 1)[0]
        if key.endswith("gate_up_proj"):
            return {f"{base}.{e}.{part}.weight": rand((rows // 2, cols)) for e in range(experts)
                    for part in ("gate_proj", "up_proj")}
        return {f"{base}.{e}.down_proj.weight": rand((rows, cols)) for e in range(experts)}
    if fused and layout == "mxfp4":  # (experts, in, out) -> blocks (experts, out, in / 32, 16), scales
        experts, fan_in, fan_out = shape
        return {key + "_blocks": torch.randint(0, 256, (experts, fan_out, fan_in // 32, 16), dtype=torch.uint8,
                                               generator=g),
                key + "_scales": torch.randint(118, 124, (experts, fan_out, fan_in // 32), dtype=torch.uint8,
                                               generator=g)}
    return {key: rand(shape)}


def load_once(folder: str, quantization: str) -> dict:
    """In a fresh process: load_base at bfloat16, with peak anonymous memory sampled while it loads."""
    from engine import runfile
    from engine.torchside import experts as X
    from engine.torchside.model import load_base

    def anon() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0
    peak, done = [anon()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.005)
    cfg = runfile.RunConfig(runfile.defaults(name="bench", model={"base": folder, "compute_dtype": "bfloat16",
                                                                  "quantization": quantization,
                                                                  "attn_implementation": "eager"},
                                             data={"path": "unused.jsonl", "packing": False}))
    before = anon()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    model = load_base(cfg, "cpu")
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    import resource
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    dense = sum(p.numel() * p.element_size() for n, p in model.named_parameters()
                if n.endswith(("experts.gate_up_proj", "experts.down_proj")))
    return {"anon_before": before, "anon_peak": peak[0], "hwm": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": seconds, "weights": weights, "experts": X.four_bit_bytes(model) or dense}


def measure_load(folder: Path, quantization: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--load", str(folder), quantization], capture_output=True,
                         text=True, cwd=ROOT)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not line:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line[0][7:])


def speed(name: str) -> dict:
    """Median seconds of forward + backward of one experts block: 4-bit, eager and grouped_mm (fp32)."""
    import importlib

    import torch
    from transformers import AutoConfig

    from engine.torchside import experts as X
    text = text_config(name)
    config = AutoConfig.for_model(**text)
    module, cls = EXPERTS_CLASS[config.model_type]
    cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls)
    torch.manual_seed(0)
    block = cls(config).float()
    for n in X.EXPERT_WEIGHTS:
        block._parameters[n] = torch.nn.Parameter(torch.randn(block._parameters[n].shape) * 0.02, requires_grad=False)
    for name_, p in block.named_parameters():
        p.requires_grad_(False)
        if name_ not in X.EXPERT_WEIGHTS:  # gpt-oss's biases: zeros rather than torch.empty's leftovers
            p.zero_()
    experts = block.num_experts
    k = getattr(config, "num_experts_per_tok", None) or config.top_k_experts
    x = torch.randn(TOKENS, config.hidden_size)
    idx = torch.rand(TOKENS, experts).topk(k, dim=-1).indices
    w = torch.softmax(torch.randn(TOKENS, k), dim=-1)

    packed = cls(config)  # torch.empty: no memory touched until the packed weights replace these
    for n in X.EXPERT_WEIGHTS:
        packed._parameters[n] = X.packed_parameter(block._parameters[n].data, "nf4", X.DOUBLE_QUANT)
    for name_, p in block.named_parameters():
        if name_ not in X.EXPERT_WEIGHTS:
            packed._parameters[name_] = p
    X.adopt(packed)

    def once(m, impl):
        config._experts_implementation = impl
        xi = x.clone().requires_grad_(True)
        start = time.perf_counter()
        m(xi, idx, w).sum().backward()
        return time.perf_counter() - start
    variants = {"grouped_mm": (block, "grouped_mm"), "eager": (block, "eager"), "4bit": (packed, "eager")}
    times = {k: [] for k in variants}
    for round_ in range(REPS + 1):  # interleaved, so a busy spell on the shared machine hits all three alike
        for k, (m, impl) in variants.items():
            t = once(m, impl)
            if round_:
                times[k].append(t)
    out = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    out["routed"] = int(idx.unique().numel())
    return out


def planned_expert_bytes(name: str) -> float:
    """The planner's 4-bit expert matrices for LAYERS layers of the model (catalog entry)."""
    from engine import planner as P
    from engine.planner.memory import NF4_BITS, expert_weight_params
    arch = P.catalog_model(name)
    return expert_weight_params(arch) / arch.layers * LAYERS * NF4_BITS[False] / 8


def measure(name: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    try:
        folder = tmp / name
        write_checkpoint(name, folder)
        disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        nf4 = measure_load(folder, "nf4")
        dense = measure_load(folder, "none")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"disk": disk, "nf4": nf4, "dense": dense, "planned": planned_expert_bytes(name), "speed": speed(name)}


MIB = 1024 ** 2


def table(results: dict) -> str:
    rows = ["| model | checkpoint | NF4 experts MiB | planned MiB | error | 16-bit experts MiB |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        got = r["nf4"]["experts"]
        rows.append(f"| {name} | {MODELS[name]}, {r['disk'] / MIB:,.0f} MiB | {got / MIB:,.1f} | "
                    f"{r['planned'] / MIB:,.1f} | {(r['planned'] / got - 1) * 100:+.2f}% | {r['dense']['experts'] / MIB:,.1f} |")
    rows += ["", "| model | experts | load: anon peak MiB (over start) | VmHWM MiB | weights MiB | load s |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        for kind, label in (("nf4", "NF4 on load"), ("dense", "bf16")):
            m = r[kind]
            rows.append(f"| {name} | {label} | {m['anon_peak'] / MIB:,.0f} ({(m['anon_peak'] - m['anon_before']) / MIB:+,.0f}) | "
                        f"{m['hwm'] / MIB:,.0f} | {m['weights'] / MIB:,.0f} | {m['seconds']:.1f} |")
    rows += ["", "| model | routed experts | grouped_mm fp32 s | eager fp32 s | 4-bit s | 4-bit / eager | 4-bit / grouped_mm |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        s = r["speed"]
        rows.append(f"| {name} | {s['routed']} | {s['grouped_mm']:.3f} | {s['eager']:.3f} | {s['4bit']:.3f} | "
                    f"{s['4bit'] / s['eager']:.2f}x | {s['4bit'] / s['grouped_mm']:.2f}x |")
    return "\n".join(rows)


def main(argv=None) -> int:
    import argparse

    import torch
    ap = argparse.ArgumentParser()
    ap.add_argument("--only")
    ap.add_argument("--load", nargs=2, metavar=("FOLDER", "QUANTIZATION"), help="(internal) one load, measured")
    args = ap.parse_args(argv)
    if args.load:
        print("RESULT", json.dumps(load_once(*args.load)))
        return 0
    names = [args.only] if args.only else list(MODELS)
    results = {}
    for name in names:
        results[name] = measure(name)
        print(name, json.dumps(results[name]), flush=True)
    body = table(results)
    print(body)
    if not args.only:
        head = (f"# 4-bit MoE experts on this CPU\n\nMeasured {datetime.date.today()} on {platform.node()} "
                f"({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}) by "
                f"`.venv/bin/python bench/moe_experts/run.py`: {LAYERS} decoder layers at full width and vocabulary, "
                "random weights in the hub's layout; what each figure is: the script's docstring.\n\n")
        (Path(__file__).parent / "RESULTS.md").write_text(head + body + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
