"""MoE experts in 4 bits (engine.torchside.experts): quantized as they load, dequantized one expert at a time,
matching a model whose experts were quantized and dequantized whole by bitsandbytes; gpt-oss's MXFP4 experts
read into the same form; and a tiny MoE trains, resumes and chats through the engine."""
from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO, events, rigtune, run_file


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    from engine.torchside.tiny import build_model
    texts = [json.loads(line)["output"] for line in DEMO.read_text().splitlines()]
    return build_model(tmp_path_factory.mktemp("moe") / "qwen3_moe", texts, vocab_size=320, hidden=64, layers=2,
                       heads=4, kv_heads=2, intermediate=96, model_type="qwen3_moe")


def whole(w, double_quant=True):
    """bitsandbytes' own round trip of a whole fused tensor: the reference for the per-expert slices. Flat: on
    this CPU bitsandbytes 0.50's dequantize_4bit kernel gets some 3-D shapes wrong ((4, 64, 48) with double quant:
    4x the quantization error; its generic implementation and the flat kernel agree with each other)."""
    from bitsandbytes import functional as F
    packed, state = F.quantize_4bit(w.reshape(-1), blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    return F.dequantize_4bit(packed, state).reshape(w.shape)


def dense_copy(model):
    """The model with every 4-bit experts module turned back into its family's class with 16/32-bit weights
    dequantized whole by bitsandbytes from the same packed data."""
    import copy

    import torch
    from engine.torchside.experts import EXPERT_WEIGHTS, FourBitExperts
    dense = copy.deepcopy(model)
    for m in dense.modules():
        if isinstance(m, FourBitExperts):
            weights = {n: getattr(m, n).dequantize() for n in EXPERT_WEIGHTS}
            for n in list(m._parameters):
                if n.rsplit("_", 1)[-1] in ("nf4", "absmax", "absmax2", "code2"):
                    del m._parameters[n]
            del m.__dict__["_rigtune_4bit"]
            m.__class__ = type(m).__mro__[2]
            m.config._experts_implementation = "eager"
            for n, w in weights.items():
                m._parameters[n] = torch.nn.Parameter(w, requires_grad=False)
    return dense


def test_experts_load_in_4bit_and_compute_as_their_whole_dequantized_copy(tmp_path, moe):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    from engine import runfile
    from engine.torchside import experts as X
    from engine.torchside.model import load_base

    # slices that straddle absmax blocks (36 x 10 values per expert) and nested blocks: bitsandbytes' whole result
    torch.manual_seed(0)
    odd = Qwen3MoeExperts(Qwen3MoeConfig(hidden_size=36, moe_intermediate_size=10, num_experts=3))
    for n in X.EXPERT_WEIGHTS:
        w = torch.randn(odd._parameters[n].shape)
        odd._parameters[n] = X.packed_parameter(w, "nf4", True)
        assert X.adopt(odd) == 1 and torch.equal(getattr(odd, n).dequantize(), whole(w))

    cfg = runfile.load(run_file(tmp_path, moe, DEMO))
    model = load_base(cfg, "cpu")
    original = AutoModelForCausalLM.from_pretrained(moe, dtype=torch.float32)
    blocks = [m for m in model.modules() if isinstance(m, X.FourBitExperts)]
    assert len(blocks) == 2 and not any(p.dim() == 3 for p in model.parameters())
    for got, orig in zip(blocks, (layer.mlp.experts for layer in original.model.layers)):
        for n in X.EXPERT_WEIGHTS:
            assert torch.equal(getattr(got, n).dequantize(), whole(getattr(orig, n).data, double_quant=False))
    # single quant for the experts (engine.torchside.experts says why): 4 bits a value, one fp32 absmax per 64
    sizes = [getattr(layer.mlp.experts, n).numel() for layer in original.model.layers for n in X.EXPERT_WEIGHTS]
    expected = sum(v // 2 + 4 * (v // 64) for v in sizes)
    assert X.four_bit_bytes(model) == expected

    # the probe's random-weight loader (engine.torchside.shape) gives the same parameters, 4-bit experts too
    import shutil

    from engine.modelref import SHAPE_MARK
    shape = tmp_path / "shape"
    shape.mkdir()
    shutil.copy(moe / "config.json", shape)
    (shape / SHAPE_MARK).write_text("{}")
    drawn = load_base(runfile.load(run_file(tmp_path, shape, DEMO, name="shape")), "cpu")
    geometry = lambda m: {n: (tuple(p.shape), p.dtype) for n, p in m.named_parameters()}
    assert geometry(drawn) == geometry(model) and X.four_bit_bytes(drawn) == expected

    # forward and backward (gradient checkpointing on) as the dense copy's, to fp32 rounding
    dense = dense_copy(model)
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for m in (model, dense):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.train()
        emb = m.get_input_embeddings().weight
        emb.requires_grad_(True)
        made = watch_activations(m)
        out = m(input_ids=ids, labels=ids, use_cache=False)
        # checkpointed layers keep none of their experts' activations until backward recomputes them
        assert made and all(ref() is None for ref in made), sum(ref() is not None for ref in made)
        out.loss.backward()
        grads.append((out.logits.detach(), emb.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7) and grads[0][1].abs().sum() > 0


def reshard(folder):
    """Split a model folder's one safetensors file into two shards and their index, tensors unchanged."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": {k: s for s, keys in halves.items() for k in keys}}))
    (folder / "model.safetensors").unlink()


def watch_activations(model) -> list:
    """Weak references to every activation the experts' act_fn makes in the forwards to come."""
    import weakref

    import torch
    made = []

    class Watched(torch.nn.Module):
        def __init__(self, act):
            super().__init__()
            self.act = act

        def forward(self, x):
            y = self.act(x)
            made.append(weakref.ref(y))
            return y
    for m in model.modules():
        if type(m).__name__.endswith("Experts") and not isinstance(m.act_fn, Watched):
            m.act_fn = Watched(m.act_fn)
    return made


def mxfp4_gpt_oss(folder):
    """A tiny gpt-oss whose experts are written as the published checkpoint ships them: MXFP4 `*_blocks`
    (experts, out, in / 32, 16) and `*_scales` (experts, out, in / 32), quantization_config mxfp4."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, GptOssConfig
    torch.manual_seed(0)
    config = GptOssConfig(vocab_size=320, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                          num_experts_per_tok=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    tensors = load_file(str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    for k in [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, fan_in, fan_out = tensors.pop(k).shape
        tensors[k + "_blocks"] = torch.randint(0, 256, (experts, fan_out, fan_in // 32, 16), dtype=torch.uint8, generator=g)
        tensors[k + "_scales"] = torch.randint(118, 126, (experts, fan_out, fan_in // 32), dtype=torch.uint8, generator=g)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((folder / "config.json").read_text())
    meta["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_gpt_oss_mxfp4_experts_load_as_nf4_of_their_dequantized_weights(tmp_path):
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from engine import runfile
    from engine.planner.arch import trainable
    from engine.torchside import experts as X
    from engine.torchside.model import load_base

    folder = mxfp4_gpt_oss(tmp_path / "gpt-oss")
    assert trainable(json.loads((folder / "config.json").read_text()))[0] is None  # MXFP4 is no refusal
    cfg = runfile.load(run_file(tmp_path, folder, DEMO))
    model = load_base(cfg, "cpu")
    plain = runfile.load(run_file(tmp_path, folder, DEMO, name="plain",
                                  model={"base": str(folder), "compute_dtype": "float32", "quantization": "none"}))
    reference = load_base(plain, "cpu")  # transformers' own MXFP4 dequantization, experts in fp32
    from safetensors.torch import load_file
    tensors = load_file(str(folder / "model.safetensors"))
    for i, layer in enumerate(reference.model.layers):
        for n in X.EXPERT_WEIGHTS:
            w = getattr(layer.mlp.experts, n).data
            key = f"model.layers.{i}.mlp.experts.{n}"
            assert torch.equal(w, convert_moe_packed_tensors(tensors[key + "_blocks"], tensors[key + "_scales"],
                                                             dtype=torch.float32))
            trained = getattr(model.model.layers[i].mlp.experts, n).dequantize()
            assert torch.equal(trained, whole(w, double_quant=False))
            # what the merged export writes for the checkpoint's MXFP4 tensor: the experts training ran on
            name, written = X.trained_expert(key + "_blocks", tensors[key + "_blocks"], tensors.get, cfg, "dequantized")
            assert name == key and written.dtype == torch.bfloat16 and torch.equal(written, trained.bfloat16())
    ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(model(input_ids=ids).logits, dense_copy(model)(input_ids=ids).logits, atol=1e-5)


def test_moe_with_4bit_experts_trains_resumes_and_chats(tmp_path, moe):
    rf = run_file(tmp_path, moe, DEMO, name="moe",
                  train={"max_steps": 6, "save_every_steps": 3, "eval_every_steps": 0, "sample_max_new_tokens": 0,
                         "learning_rate": 5e-3, "micro_batch_size": 4, "gradient_checkpointing": True})
    res = rigtune("train", rf, "--no-tui", timeout=600)
    run = tmp_path / "runs" / "moe"
    assert res.returncode == 0, res.stderr + (run / "train.log").read_text()[-3000:]
    losses = [e["loss"] for e in events(run) if e["event"] == "step"]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]), losses
    rf.write_text(rf.read_text().replace("max_steps = 6", "max_steps = 8"))
    res = rigtune("train", rf, "--no-tui", "--resume", timeout=600)
    assert res.returncode == 0, res.stderr
    start = [e for e in events(run) if e["event"] == "start"][-1]
    assert start["resumed_from"].endswith("step-000006")
    assert [e["step"] for e in events(run) if e["event"] == "step"][-2:] == [7, 8]
    res = rigtune("chat", run, "--prompt", "Hello", "--max-new-tokens", "4")
    assert res.returncode == 0 and res.stdout.strip(), res.stderr

    # the merged export (per-expert checkpoint tensors, as the hub ships Qwen3-MoE) is the model chat runs
    import torch
    from transformers import AutoModelForCausalLM

    from engine.torchside import chat, export
    model, tok, _, _ = chat.load(run, None)
    reshard(moe)  # the base in two shards with an index, as the hub ships larger models
    export.merged(run, tmp_path / "merged", progress=lambda line: None)
    index = json.loads((tmp_path / "merged" / "model.safetensors.index.json").read_text())["weight_map"]
    from safetensors import safe_open
    written = {}
    for shard in sorted((tmp_path / "merged").glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            written.update({k: shard.name for k in f.keys()})
    assert index == written and len(set(written.values())) == 2  # the index names what was written, where
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = torch.randint(0, 320, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = merged(ids).logits, model(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=0), (a - b).abs().max()


def test_moe_models_plan_to_fit_one_24gb_card_and_the_tier_table_says_so():
    """Every expert resident in 4 bits: Qwen3-30B-A3B, Gemma 4 26B-A4B and gpt-oss-20b plan to fit one 24 GB card
    at seq 2048, micro-batch 1, gradient checkpointing (the run file's defaults otherwise); in 16 bits none does."""
    from engine import planner as P
    from engine import tiers as T
    for name in ("Qwen3-30B-A3B", "Gemma-4-26B-A4B", "gpt-oss-20b"):
        res = rigtune("plan", "--model", name, "--gpus", "1x24", "--seq-len", "2048", "--micro-batch", "1",
                      "--gradient-checkpointing", "--json")
        out = json.loads(res.stdout)
        assert out["fits"] and out["per_gpu_peak_gib"] < 24 / (1 + P.FIT_MARGIN), (name, out)
        assert any("4-bit like the linear layers" in n for n in out["notes"]), out["notes"]
        arch = P.catalog_model(name)
        inp = P.PlanInput(arch=arch, gpus=[24.0])
        packed = P.breakdown(inp)["weights"]
        assert P.breakdown(P.replace(inp, quantization="none"))["weights"] > 24 > packed
    caps = T.capabilities(T.tiers()["1500"], T.MOE)
    assert [c.model for c in caps] == list(T.MOE.values()) and all(c.fits for c in caps), caps
