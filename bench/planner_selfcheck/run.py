"""The planner's memory terms against exact bytes measured on rigtune's own engine, term by term.

Real architecture shapes at full width and vocabulary, truncated to two decoder layers (every term but
the embeddings scales with the layer count, so the planner is asked about the same two layers): Llama-3.1-8B,
Qwen3-8B, Gemma-3-12B and the mixture of experts Qwen3-30B-A3B (128 experts, 8 per token), random weights; and
two models whose layers differ, each cut to one layer of each kind: Qwen3.5-27B (a Gated DeltaNet layer, which
runs transformers' PyTorch chunked delta rule on the CPU, and a gated full-attention layer) and Gemma-4-31B (a
sliding layer with 256-wide heads and 16 kv heads, a full one with 512-wide heads, 4 kv heads, keys as values). Each is loaded by engine.torchside.model.load_base (NF4, double
quant) and add_lora (r16, all linear layers, dropout 0.05), then one step of engine.torchside.loss.loss_sum
runs forward and backward, and the engine's optimizer steps. Measured exactly:
  weights      bytes of every parameter and buffer (packed 4-bit weights with their quantization state,
               embeddings, norms) and of the lm_head rigtune holds aside for the chunked loss
  adapters     LoRA A and B bytes
  gradients    bytes of every .grad after backward
  optimizer    bytes of the optimizer's state after its first step
  activations  bytes of the tensors autograd saves for backward in the decoder (torch.autograd.graph.
               saved_tensors_hooks, one count per storage, parameters excluded), without checkpointing
  boundaries   the same with gradient checkpointing (the layer inputs kept for the recompute)
  loss peak    the most bytes alive at once while the chunked loss runs forward and backward (a
               TorchDispatchMode that follows every tensor the ops create until it is freed)
Compared with engine.planner.breakdown at the same settings and the same two layers. Then, under FSDP over two
gloo ranks, each rank's share of the adapters and their AdamW state, sharded and whole (`--sharded-only`
redoes that table alone).

The CPU computes in float32 here (bf16 matmuls are very slow on it), so the planner is asked at
compute_dtype float32 too: every activation is 4 bytes instead of CUDA's 2, the same tensors. The CPU's SDPA
kernel saves its output and log-sum-exp like CUDA's flash kernel. The MoE block's experts are fused 3-D
parameters that this stack leaves unquantized (in the compute dtype, float32 here like everything else) and LoRA
trains its attention linears only; which experts a token reaches depends on the router, so the saved tensors of
the experts are those of this batch's routing (the planner assumes top-k per token, which holds for any routing).
On the CPU transformers runs its grouped-matmul fallback op for the experts; like CUDA's torch._grouped_mm,
it saves no input when the expert weights are frozen (checked on torch._grouped_mm's autograd node: with a
frozen weight it keeps the weight and offsets only), so the saved tensors are the same ones in both places.

Run: .venv/bin/python bench/planner_selfcheck/run.py   (writes RESULTS.md beside it; ~15 minutes on 2 cores;
     --only NAME measures one model and prints it)
"""
from __future__ import annotations

import datetime
import gc
import platform
import sys
import tempfile
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from engine import planner as P  # noqa: E402
from engine import runfile  # noqa: E402

LAYERS, SEQ = 2, 256
# the two hybrid models' vocabularies (248k, 262k) are cut to 32k: in float32 their embeddings and lm_head alone
# take 10 GB, which with the load's copies ran this shared 23 GB machine out of memory; no term but the weights'
# and the loss's embedding and vocabulary parts depends on it, and the planner is asked about the same 32k
VOCAB_CUT = 32768
SHAPES = {  # config.json facts of the real models
    "Llama-3.1-8B": ("Llama", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
                                   intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)),
    "Qwen3-8B": ("Qwen3", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                               intermediate_size=12288, vocab_size=151936, tie_word_embeddings=False)),
    "Gemma-3-12B": ("Gemma3Text", dict(hidden_size=3840, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
                                       intermediate_size=15360, vocab_size=262208, tie_word_embeddings=True)),
    "Qwen3-30B-A3B": ("Qwen3Moe", dict(hidden_size=2048, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                                       intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                                       num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
                                       mlp_only_layers=[], vocab_size=151936, tie_word_embeddings=False)),
    # one layer of each kind: a Gated DeltaNet linear-attention layer and a gated full-attention one
    "Qwen3.5-27B": ("Qwen3_5Text", dict(hidden_size=5120, num_attention_heads=24, num_key_value_heads=4, head_dim=256,
                                        intermediate_size=17408, vocab_size=VOCAB_CUT, tie_word_embeddings=False,
                                        linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128,
                                        linear_value_head_dim=128, linear_conv_kernel_dim=4,
                                        layer_types=["linear_attention", "full_attention"])),
    # a sliding layer (256-wide heads, 16 kv heads) and a full one (512-wide heads, 4 kv heads, keys as values)
    "Gemma-4-31B": ("Gemma4Text", dict(hidden_size=5376, num_attention_heads=32, num_key_value_heads=16, head_dim=256,
                                       global_head_dim=512, num_global_key_value_heads=4, attention_k_eq_v=True,
                                       intermediate_size=21504, vocab_size=VOCAB_CUT, tie_word_embeddings=True,
                                       hidden_size_per_layer_input=0, sliding_window=1024,
                                       final_logit_softcapping=30.0,
                                       layer_types=["sliding_attention", "full_attention"])),
}
MODEL_TYPES = {"Llama-3.1-8B": "llama", "Qwen3-8B": "qwen3", "Gemma-3-12B": "gemma3_text",
               "Qwen3-30B-A3B": "qwen3_moe", "Qwen3.5-27B": "qwen3_5_text", "Gemma-4-31B": "gemma4_text"}
SHARDED_HEAD = "## Sharded under FSDP"
TERMS = ["weights", "adapters", "gradients", "optimizer", "activations", "boundaries", "loss peak"]


def nbytes(t) -> int:
    return t.untyped_storage().nbytes()


def build(folder: Path, family: str, shape: dict) -> None:
    import torch
    import transformers
    config = getattr(transformers, f"{family}Config")(**shape, num_hidden_layers=LAYERS, max_position_embeddings=4096)
    if family == "Gemma3Text":
        config.layer_types = ["full_attention"] * LAYERS
    model = getattr(transformers, f"{family.removesuffix('Text')}ForCausalLM")(config)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)


def run_config(folder: Path, gc_on: bool):
    return runfile.RunConfig(runfile.defaults(
        name="selfcheck", model={"base": str(folder), "compute_dtype": "float32", "quantization": "nf4"},
        lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        data={"path": "unused.jsonl", "max_seq_len": SEQ, "packing": False},
        train={"gradient_checkpointing": gc_on, "kernels": "none", "loss_chunk_tokens": 4096,
               "optimizer": "adamw_torch"}))


class LiveBytes:
    """A dispatch mode that counts the bytes of every tensor storage the ops create, until it is freed; .peak.
    Storages in `exclude` (the weights: a transposed view of lm_head is an op's output too) are not counted."""

    def __init__(self, exclude=frozenset()):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                import torch
                for t in (out if isinstance(out, (tuple, list)) else [out]):
                    if isinstance(t, torch.Tensor):
                        outer.add(t)
                return out
        self.mode, self.live, self.now, self.peak, self.exclude = Mode(), {}, 0, 0, exclude

    def add(self, t):
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self.live or key in self.exclude or storage.nbytes() == 0:
            return
        self.live[key] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self.drop, key)

    def drop(self, key):
        self.now -= self.live.pop(key, 0)


def saved_bytes(fn, exclude: set) -> int:
    """Bytes autograd saves for backward while fn() runs (one count per storage, parameters excluded)."""
    import torch
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude:
            seen[ptr] = nbytes(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def measure(folder: Path) -> dict:
    import torch

    from engine.torchside.loss import loss_sum
    from engine.torchside.model import add_lora, load_base
    from engine.torchside.setup import make_optimizer
    out = {}
    for gc_on in (False, True):
        cfg = run_config(folder, gc_on)
        loaded = add_lora(cfg, load_base(cfg, "cpu"), "cpu")
        model, head = loaded.model, loaded.head
        params = [p for p in model.parameters()] + ([head.weight] if head is not None else [])
        exclude = {p.untyped_storage().data_ptr() for p in params}
        for mod in model.modules():  # the 4-bit weights' quantization state is weight too
            qs = getattr(getattr(mod, "weight", None), "quant_state", None)
            if qs is not None:
                for t in qs.as_dict(packed=True).values():
                    if isinstance(t, torch.Tensor):
                        exclude.add(t.untyped_storage().data_ptr())
        torch.manual_seed(0)
        ids = torch.randint(0, 1000, (1, SEQ))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        model.train()
        if not gc_on:
            lora = [p for p in model.parameters() if p.requires_grad]
            storages = {}
            for p in model.parameters():
                storages[p.untyped_storage().data_ptr()] = nbytes(p)
            for mod in model.modules():
                qs = getattr(getattr(mod, "weight", None), "quant_state", None)
                if qs is not None:
                    for t in qs.as_dict(packed=True).values():
                        if isinstance(t, torch.Tensor):
                            storages[t.untyped_storage().data_ptr()] = nbytes(t)
            for b in model.buffers():
                storages[b.untyped_storage().data_ptr()] = nbytes(b)
            head_bytes = nbytes(head.weight) if head is not None and head.weight.untyped_storage().data_ptr() not in storages else 0
            out["adapters"] = sum(nbytes(p) for p in lora)
            out["weights"] = sum(storages.values()) + head_bytes - out["adapters"]
            # the decoder's saved tensors, then the loss's alone (on detached final hidden states)
            total = dict(batch)
            loss, saved = saved_bytes(lambda: loss_sum(model, dict(total), cfg.train.loss_chunk_tokens, head), exclude)
            hidden = model(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).logits.detach()
            hidden.requires_grad_(True)
            out["activations"] = saved - hidden_loss_saved(hidden, ids, head, cfg, exclude)
            loss.backward()
            out["gradients"] = sum(nbytes(p.grad) for p in model.parameters() if p.grad is not None)
            opt = make_optimizer("adamw_torch", lora, 1e-4, 0.0)
            opt.step()
            out["optimizer"] = sum(nbytes(t) for s in opt.state.values() for t in s.values()
                                   if isinstance(t, torch.Tensor) and t.dim() > 0)
            out["loss peak"] = loss_peak(hidden, ids, head, cfg)
        else:
            _, saved = saved_bytes(lambda: loss_sum(model, dict(batch), cfg.train.loss_chunk_tokens, head), exclude)
            hidden = torch.zeros(1, SEQ, model.config.hidden_size, requires_grad=True)
            out["boundaries"] = saved - hidden_loss_saved(hidden, ids, head, cfg, exclude)
        del loaded, model, head
        gc.collect()
    return out


def _loss_on(hidden, ids, head, cfg):
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from engine import data as D
    target = ids[:, 1:]
    keep = target != D.IGNORE
    h, y = hidden[:, :-1][keep], target[keep]
    total = 0.0
    for i in range(0, y.numel(), cfg.train.loss_chunk_tokens):
        total = total + checkpoint(lambda a, b: F.cross_entropy(head(a).float(), b, reduction="sum"),
                                   h[i:i + cfg.train.loss_chunk_tokens], y[i:i + cfg.train.loss_chunk_tokens],
                                   use_reentrant=False)
    return total


def hidden_loss_saved(hidden, ids, head, cfg, exclude) -> int:
    """What the loss alone saves for backward (to take out of the decoder's count)."""
    _, saved = saved_bytes(lambda: _loss_on(hidden, ids, head, cfg), exclude)
    return saved


def loss_peak(hidden, ids, head, cfg) -> int:
    """Most bytes alive at once during the chunked loss's forward and backward (the recompute included)."""
    live = LiveBytes({head.weight.untyped_storage().data_ptr()})
    with live.mode:
        _loss_on(hidden, ids, head, cfg).backward()
    return live.peak


def planned(name: str, shape: dict) -> dict:
    model_type = MODEL_TYPES[name]
    arch = P.arch_from_config({**shape, "num_hidden_layers": LAYERS, "model_type": model_type}, name)
    base = P.PlanInput(arch=arch, gpus=[1000.0], seq_len=SEQ, micro_batch=1, lora_r=16, lora_dropout=0.05,
                       lora_dtype="float32", compute_dtype="float32", gradient_checkpointing=False,
                       loss_chunk=4096, kernels="none")
    t = {k: v * P.GIB for k, v in P.breakdown(base).items()}
    gc_terms = P.breakdown(P.replace(base, gradient_checkpointing=True))
    # the one layer recomputed in full (the largest kind's, when the two layers differ) is not a boundary
    from engine.planner.activations import decoder_bytes
    from engine.planner.memory import _targets
    one_layer = SEQ * decoder_bytes(base, _targets(base))[1]
    return {"weights": t["weights"], "adapters": t["adapters"], "gradients": t["gradients"],
            "optimizer": t["optimizer"], "activations": t["activations"],
            "boundaries": gc_terms["activations"] * P.GIB - one_layer, "loss peak": t["logits"]}


def sharded_table(rows: list) -> str:
    return "\n".join([
        SHARDED_HEAD, "",
        "Two gloo ranks, one training step of the Llama-3.1-8B shape (two layers) through `rigtune train` with "
        "strategy fsdp: each rank's bytes of LoRA weights and AdamW state, measured by the engine at the end of "
        "the run (the memory event's `adapter_state_bytes`; the gradients, sharded the same way, are freed after "
        "each step by then), against the planner's adapter and optimizer terms for what each rank owns.", "",
        "| adapters | rank | measured MiB | planner MiB | error |", "|---|---|---|---|---|", *rows, ""]) + "\n"


def sharded() -> list:
    """Two gloo ranks train one step of the Llama-3.1-8B shape under FSDP (`rigtune train`, the real launch);
    each rank's bytes of adapters and AdamW state at the end (the memory event's adapter_state_bytes; the
    gradients are freed by then) against the planner's sharded terms (what each rank owns; the layers gathered
    in flight come and go)."""
    import json
    import os
    import subprocess

    from engine.torchside.tiny import build_tokenizer
    family, shape = SHAPES["Llama-3.1-8B"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build(tmp / "model", family, shape)
        texts = [f"Question {i}: what is {i} plus {i}? Answer: {2 * i}." for i in range(64)]
        build_tokenizer(texts, 300).save_pretrained(tmp / "model")
        (tmp / "d.jsonl").write_text("".join(json.dumps({"instruction": t, "output": t}) + "\n" for t in texts))
        for shard in (True, False):
            name = f"fsdp-{'sharded' if shard else 'whole'}"
            values = runfile.defaults(
                name=name, output_root=str(tmp / "runs"),
                hardware={"gpus": [], "strategy": "fsdp", "num_processes": 2, "shard_adapters": shard},
                model={"base": str(tmp / "model"), "compute_dtype": "float32"},
                lora={"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                data={"path": str(tmp / "d.jsonl"), "max_seq_len": 64, "eval_fraction": 0.0},
                train={"max_steps": 1, "micro_batch_size": 1, "eval_every_steps": 0, "save_every_steps": 0,
                       "sample_max_new_tokens": 0, "optimizer": "adamw_torch", "kernels": "none"})
            runfile.save(values, tmp / f"{name}.toml")
            res = subprocess.run([sys.executable, "-m", "tui.cli", "train", str(tmp / f"{name}.toml"), "--no-tui"],
                                 cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if res.returncode != 0:
                raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
            evs = [json.loads(x) for x in (tmp / "runs" / name / "metrics.jsonl").read_text().splitlines()]
            got = next(e for e in evs if e["event"] == "memory")["adapter_state_bytes"]
            arch = P.arch_from_config({**shape, "num_hidden_layers": LAYERS, "model_type": "llama"}, "x")
            inp = P.PlanInput(arch=arch, gpus=[1000.0, 1000.0], strategy="fsdp", lora_r=16, lora_dtype="float32",
                              shard_adapters=shard)
            # measured after the step, when the gradients are freed: weights and AdamW's two states
            own = 3 * P.adapter_params(inp) * 4 / (2 if P.adapters_sharded(inp) else 1)
            for rank, b in enumerate(got):
                rows.append(f"| {'sharded' if shard else 'whole (shard_adapters = false)'} | {rank} | "
                            f"{b / 2**20:,.2f} | {own / 2**20:,.2f} | {(own - b) / b:+.1%} |")
    return rows


def main():
    import torch
    if "--sharded-only" in sys.argv:  # redo the FSDP table alone
        text = (HERE / "RESULTS.md").read_text().split(SHARDED_HEAD)[0]
        (HERE / "RESULTS.md").write_text(text + sharded_table(sharded()))
        print((HERE / "RESULTS.md").read_text())
        return
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None  # one model, printed only
    rows, errors = [], {k: [] for k in TERMS}
    for name, (family, shape) in SHAPES.items():
        if only and name != only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp), family, shape)
            got = measure(Path(tmp))
        plan = planned(name, shape)
        for term in TERMS:
            err = (plan[term] - got[term]) / got[term]
            errors[term].append(abs(err))
            rows.append(f"| {name} | {term} | {got[term] / 2**20:,.1f} | {plan[term] / 2**20:,.1f} | {err:+.1%} |")
        print(name, {k: round((plan[k] - got[k]) / got[k], 3) for k in TERMS}, flush=True)
    if only:
        print("\n".join(rows))
        return
    out = ["# Planner self-check: each term against exact bytes on rigtune's own engine", "",
           f"Measured {datetime.date.today()} on {platform.node()} ({platform.machine()}, CPU, torch "
           f"{torch.__version__}) by `bench/planner_selfcheck/run.py`: {LAYERS} decoder layers at full width and "
           f"vocabulary, seq {SEQ}, micro-batch 1, NF4 + double quant, LoRA r16 on all linear layers, dropout "
           "0.05, fp32 adapters, AdamW, rigtune's chunked loss; float32 compute on this CPU (see the script).", "",
           "| model | term | measured MiB | planner MiB | error |", "|---|---|---|---|---|", *rows, "",
           "Largest error per term over the models: "
           + ", ".join(f"{k} {max(v):.1%}" for k, v in errors.items()) + ".", ""]
    (HERE / "RESULTS.md").write_text("\n".join(out) + "\n" + sharded_table(sharded()))
    print("\n".join(out))


if __name__ == "__main__":
    main()
