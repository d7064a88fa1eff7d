"""What the GGUF writer (gguf_export) needs to know per model family, as llama.cpp's own converter
(convert_hf_to_gguf.py, at the llama.cpp that node-llama-cpp 3.22.1 ships, v0.5.0) writes it: which llama.cpp graph
runs it, its metadata keys, its tensor names, the changes its tensors need (Gemma's norms + 1, MoE experts stacked
into one tensor per projection, Llama's rotary row order) and what that graph cannot run (refused, with the reason).

The model's settings are read as transformers reads them (its config class fills in what config.json leaves out;
a multimodal wrapper's text_config is the model llama.cpp runs), so Gemma 3's published config.json works.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import BadInput

# transformers architecture -> (the gguf package's MODEL_ARCH name, whether q/k rows are permuted): llama.cpp's
# Llama graph wants its own rotary row order; its other graphs take transformers' as it is
ARCHS = {"LlamaForCausalLM": ("LLAMA", True), "MistralForCausalLM": ("LLAMA", True),
         "MixtralForCausalLM": ("LLAMA", True),
         "Qwen2ForCausalLM": ("QWEN2", False), "Qwen3ForCausalLM": ("QWEN3", False),
         "Qwen3MoeForCausalLM": ("QWEN3MOE", False),
         "Gemma2ForCausalLM": ("GEMMA2", False), "Gemma3ForCausalLM": ("GEMMA3", False),
         "Gemma3ForConditionalGeneration": ("GEMMA3", False), "Phi3ForCausalLM": ("PHI3", False),
         "Qwen3_5ForCausalLM": ("QWEN35", False), "Qwen3_5ForConditionalGeneration": ("QWEN35", False),
         "Qwen3_5MoeForCausalLM": ("QWEN35MOE", False), "Qwen3_5MoeForConditionalGeneration": ("QWEN35MOE", False),
         "Gemma4ForCausalLM": ("GEMMA4", False), "Gemma4ForConditionalGeneration": ("GEMMA4", False),
         "GptOssForCausalLM": ("GPT_OSS", False)}
QWEN35 = ("QWEN35", "QWEN35MOE")
WRAPPER_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                    ("language_model.lm_head.", "lm_head."))
SKIPPED_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.",
                    "model.visual.", "mtp.",  # Qwen3.5's vision tower and its multi-token-prediction layer
                    "model.embed_vision.", "model.embed_audio.", "model.audio_tower.")  # Gemma 4's
EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(\w+)\.weight$")
CONVERT = "Export --to merged and convert it with llama.cpp's convert_hf_to_gguf.py."


def load_config(folder: Path) -> dict:
    """config.json as transformers reads it: its config class's defaults filled in, a multimodal wrapper's text
    model in place of the wrapper (its architectures kept). BadInput for a family rigtune does not write."""
    raw = json.loads((folder / "config.json").read_text())
    arch = (raw.get("architectures") or ["?"])[0]
    if arch not in ARCHS:
        raise BadInput(f"GGUF export covers {', '.join(ARCHS)}; this model is {arch}. {CONVERT}", key="--to")
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(folder).get_text_config().to_dict()
    config["architectures"] = raw["architectures"]
    return config


def rope(config: dict, kind: str = "full_attention") -> dict:
    """The RoPE parameters however config.json spells them: rope_theta and rope_scaling (the hub's files,
    transformers 4) or rope_parameters (transformers 5 writes rope_theta inside it, per layer kind where layers
    differ, as Gemma 3's sliding and full layers do). rope_type "default" is plain."""
    params = dict(config.get("rope_scaling") or {}) | dict(config.get("rope_parameters") or {})
    if "full_attention" in params or "sliding_attention" in params:
        params = dict(params.get(kind) or {})
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def rope_factors(config: dict):
    """llama.cpp's rope_freqs tensor for Llama 3.x's "llama3" RoPE scaling (None for plain RoPE): one float32 per
    frequency, the plain inverse frequency over the scaled one (llama.cpp divides each angle by it), computed as
    its converter does. Unlike the converter, original_max_position_embeddings is read where transformers reads
    it (in the scaling parameters) instead of the top level, where Llama 3.1's config has none (8192 assumed)."""
    import math

    import torch
    r = rope(config)
    if r["rope_type"] == "proportional" and ARCHS[config["architectures"][0]][0] == "GEMMA4":
        return gemma4_rope_freqs(config)
    if r["rope_type"] != "llama3":
        return None
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (r["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = r.get("factor", 8.0), r.get("low_freq_factor", 1.0), r.get("high_freq_factor", 4.0)
    old = r.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32).numpy()


def _refuse(arch: str, what: str, key: str) -> None:
    raise BadInput(f"this {arch} {what}. {CONVERT}", key=key)


def check_rope(config: dict) -> None:
    """RoPE scaling the target graph runs as transformers does: plain, linear (positions over the factor, as
    llama.cpp's freq_scale), Llama 3.x's "llama3" on the Llama graph (rope_freqs); Gemma 3's sliding layers plain."""
    arch = config["architectures"][0]
    kind = rope(config)["rope_type"]
    graph = ARCHS[arch][0]
    if (graph == "GEMMA4" and kind == "proportional") or (graph == "GPT_OSS" and kind == "yarn"):
        kind = "default"  # Gemma 4's full layers' partial RoPE: rope_freqs (gemma4_rope_freqs); gpt-oss's YaRN
    if kind not in ("default", "linear", "llama3") or (kind == "llama3" and graph != "LLAMA"):
        _refuse(arch, f"uses RoPE scaling of type {kind!r}, which rigtune's GGUF export does not write (it writes "
                      "plain and linear RoPE and, for Llama, Llama 3.x's 'llama3'); llama.cpp would run it as plain "
                      "RoPE", "rope_scaling")
    if "sliding_attention" in (config.get("rope_parameters") or {}) and \
            rope(config, "sliding_attention")["rope_type"] != "default":
        _refuse(arch, "scales RoPE on its sliding-window layers, which llama.cpp's graph does not", "rope_scaling")


def check_family(config: dict) -> None:
    """What the family's llama.cpp graph cannot run as transformers does, refused before anything is written."""
    arch = config["architectures"][0]
    graph = ARCHS[arch][0]
    check_rope(config)
    if graph == "QWEN3MOE":
        if not config.get("norm_topk_prob"):
            _refuse(arch, "does not renormalise its chosen experts' weights (norm_topk_prob false); llama.cpp's "
                          "qwen3moe graph always does", "norm_topk_prob")
        if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
            _refuse(arch, "has dense MLP layers between its MoE layers (mlp_only_layers / decoder_sparse_step); "
                          "llama.cpp's qwen3moe graph has experts in every layer", "mlp_only_layers")
        if config.get("use_sliding_window"):
            _refuse(arch, "uses a sliding window, which llama.cpp's qwen3moe graph does not", "use_sliding_window")
    if graph in ("GEMMA2", "GEMMA3"):
        head_dim, layers = config["head_dim"], config["num_hidden_layers"]
        # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden/heads) for its 27B (46 / 62 layers)
        wide = layers == (46 if graph == "GEMMA2" else 62)
        scalar = config["hidden_size"] // config["num_attention_heads"] if wide else head_dim
        if config.get("query_pre_attn_scalar", scalar) != scalar:
            _refuse(arch, f"scales queries by query_pre_attn_scalar {config['query_pre_attn_scalar']}; llama.cpp's "
                          f"{graph.lower()} graph scales this size of model by {scalar}", "query_pre_attn_scalar")
        if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            _refuse(arch, f"uses {config['hidden_activation']}; llama.cpp's Gemma graphs use tanh-approximated GELU",
                    "hidden_activation")
    if graph in QWEN35 and set(config.get("layer_types") or []) - {"linear_attention", "full_attention"}:
        _refuse(arch, f"has layers of kinds {sorted(set(config['layer_types']))}; llama.cpp's {graph.lower()} graph "
                      "has linear and full attention layers only", "layer_types")
    if graph == "GEMMA4":
        check_gemma4(config)
    if graph == "GPT_OSS" and config.get("tie_word_embeddings"):
        _refuse(arch, "ties its output layer to its embeddings; llama.cpp's gpt-oss graph needs an output layer of "
                      "its own (every published gpt-oss has one)", "tie_word_embeddings")
    if graph == "GEMMA2" and config.get("tie_word_embeddings") is False:
        _refuse(arch, "has an output layer apart from its embeddings; llama.cpp's gemma2 graph reuses the "
                      "embeddings", "tie_word_embeddings")
    if graph == "GEMMA3" and config.get("attn_logit_softcapping"):
        _refuse(arch, "caps attention logits, which llama.cpp's gemma3 graph does not", "attn_logit_softcapping")


def check_gemma4(config: dict) -> None:
    arch = config["architectures"][0]
    for key, what in (("hidden_size_per_layer_input", "per-layer input embeddings (Gemma 4 E2B/E4B)"),
                      ("num_kv_shared_layers", "layers that reuse another layer's KV cache"),
                      ("use_double_wide_mlp", "double-wide MLPs")):
        if config.get(key):
            _refuse(arch, f"has {what}, which rigtune's GGUF export does not write yet", key)
    if rope(config)["rope_type"] != "proportional":
        _refuse(arch, f"has {rope(config)['rope_type']!r} RoPE on its full-attention layers; llama.cpp's gemma4 "
                      "graph is given Gemma 4's proportional RoPE", "rope_parameters")


def _swa_pattern(config: dict, default: int) -> list | None:
    """The sliding layers as a list of bools where layer_types differ from llama.cpp's default pattern for the
    graph (every layer sliding but each default-th); None where the default already matches."""
    kinds = config.get("layer_types") or []
    swa = [k == "sliding_attention" for k in kinds]
    fallback = [i % default < default - 1 for i in range(len(swa))]
    return None if swa == fallback else swa


def add_family_metadata(w, config: dict) -> None:
    """The keys llama.cpp reads for the family, beyond the ones every family has (gguf_export.add_metadata)."""
    graph = ARCHS[config["architectures"][0]][0]
    r = rope(config)
    if r["rope_type"] == "linear":
        import gguf
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(r["factor"])
    if graph == "GPT_OSS":
        add_gpt_oss(w, config)
    experts = config.get("num_local_experts") or config.get("num_experts")
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(config.get("num_experts_per_tok") or config["top_k_experts"])
    if graph in ("QWEN3MOE", "QWEN35MOE") or (graph == "GEMMA4" and experts):
        w.add_expert_feed_forward_length(config["moe_intermediate_size"])
    if config.get("shared_expert_intermediate_size"):
        w.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])
    if graph == "GEMMA4":
        add_gemma4(w, config)
    if graph in ("GEMMA2", "GEMMA3", "GEMMA4"):
        if config.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(config["final_logit_softcapping"])
        if graph == "GEMMA2":
            w.add_attn_logit_softcapping(config["attn_logit_softcapping"])
        if any(k == "sliding_attention" for k in config.get("layer_types") or []):
            w.add_sliding_window(config["sliding_window"])
            pattern = _swa_pattern(config, 2 if graph == "GEMMA2" else 6)
            if pattern is not None or graph == "GEMMA4":  # Gemma 4's graph has no default
                pattern = [k == "sliding_attention" for k in config["layer_types"]]
                w.add_sliding_window_pattern(pattern)
            w.add_rope_freq_base_swa(rope(config, "sliding_attention")["rope_theta"])
    if graph in QWEN35:
        add_linear_attention(w, config)
    if graph == "PHI3":
        w.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings")
                                        or config["max_position_embeddings"])
        w.add_sliding_window(config.get("sliding_window") or 0)


def notes(config: dict) -> list:
    """What llama.cpp runs differently from transformers in a GGUF written as its converter writes it."""
    r = rope(config)
    if ARCHS[config["architectures"][0]][0] == "GPT_OSS" and r["rope_type"] == "yarn" and not r.get("truncate", True):
        return ["note: llama.cpp rounds YaRN's correction range to whole dims; this gpt-oss's (truncate: false) "
                "does not, so its RoPE differs slightly in llama.cpp, as in any GGUF of gpt-oss"]
    return []


def add_gpt_oss(w, config: dict) -> None:
    """gpt-oss's sliding window, expert size and YaRN, as llama.cpp's converter writes them."""
    import gguf
    r = rope(config)
    w.add_sliding_window(config["sliding_window"])
    w.add_expert_feed_forward_length(config["intermediate_size"])
    pattern = _swa_pattern(config, 2)
    if pattern is not None:
        w.add_sliding_window_pattern(pattern)
    if r["rope_type"] == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(r["factor"])
        w.add_rope_scaling_orig_ctx_len(r["original_max_position_embeddings"])
        for key, setter in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                            ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                            ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
                            ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if r.get(key) is not None:
                setter(r[key])


def gemma4_full(config: dict, key: str):
    """A full-attention layer's head_dim or num_key_value_heads (global_* or per_layer_config)."""
    glob = config.get({"head_dim": "global_head_dim", "num_key_value_heads": "num_global_key_value_heads"}[key])
    if glob:
        return glob
    for i, layer in sorted((config.get("per_layer_config") or {}).items()):
        if config["layer_types"][int(i)] == "full_attention" and key in layer:
            return layer[key]
    return config[key]


def add_gemma4(w, config: dict) -> None:
    """Gemma 4's sliding and full layers' head sizes, KV heads and rotary dims, as its converter writes them."""
    full, swa = gemma4_full(config, "head_dim"), config["head_dim"]
    w.add_key_length(full)
    w.add_value_length(full)
    w.add_key_length_swa(swa)
    w.add_value_length_swa(swa)
    w.add_rope_dimension_count(full)  # proportional: the unrotated dims get rope_freqs of 1e30
    w.add_rope_dimension_count_swa(int(swa * rope(config, "sliding_attention").get("partial_rotary_factor", 1.0)))
    kv_full = gemma4_full(config, "num_key_value_heads")
    w.add_head_count_kv([config["num_key_value_heads"] if k == "sliding_attention" else kv_full
                         for k in config["layer_types"]])
    w.add_shared_kv_layers(config.get("num_kv_shared_layers") or 0)
    w.add_embedding_length_per_layer_input(config.get("hidden_size_per_layer_input") or 0)


def gemma4_rope_freqs(config: dict):
    """Gemma 4's full layers rotate only a part of each head, with frequencies over the whole head
    ("proportional"): llama.cpp rotates the whole head and divides the other pairs' angles by 1e30."""
    import numpy as np
    full = gemma4_full(config, "head_dim")
    rotated = int(full * rope(config).get("partial_rotary_factor", 1.0) / 2)
    return np.array([1.0] * rotated + [1e30] * (full // 2 - rotated), dtype=np.float32)


def add_linear_attention(w, config: dict) -> None:
    """Qwen3.5's Gated DeltaNet sizes as llama.cpp's ssm keys, which layers are linear, and the interleaved
    M-RoPE sections (text tokens give every section the same position: plain RoPE on the rotated quarter)."""
    nv = config["linear_num_value_heads"]
    w.add_ssm_conv_kernel(config["linear_conv_kernel_dim"])
    w.add_ssm_state_size(config["linear_key_head_dim"])
    w.add_ssm_group_count(config["linear_num_key_heads"])
    w.add_ssm_time_step_rank(nv)
    w.add_ssm_inner_size(config["linear_value_head_dim"] * nv)
    w.add_array(f"{w.arch}.attention.recurrent_layers", [k == "linear_attention" for k in config["layer_types"]])
    w.add_full_attention_interval(config.get("full_attention_interval", 4))
    sections = list(rope(config).get("mrope_section") or [11, 11, 10])  # transformers' default, as the converter's
    pairs = int(rope(config).get("partial_rotary_factor", 1.0) * config["head_dim"]) // 2
    if sum(sections) > 2 * pairs:  # more than the rotated dims (only in copies narrower than any published model),
        # which llama.cpp aborts on: each rotated pair in the section that transformers' interleaving gives it
        sections = [(pairs - j + 2) // 3 for j in range(3)]
    w.add_rope_dimension_sections((sections + [0] * 4)[:4])


def hf_name(config: dict, name: str) -> str | None:
    """The tensor's name as the text model's (a multimodal wrapper's prefixes taken off), None for tensors llama.cpp's
    text GGUF leaves out (the vision tower and its projector; Gemma 2's lm_head, the embeddings' copy)."""
    if name.startswith(SKIPPED_PREFIXES):
        return None
    for prefix, plain in WRAPPER_PREFIXES:
        if name.startswith(prefix):
            name = plain + name[len(prefix):]
    graph = ARCHS[config["architectures"][0]][0]
    if name == "lm_head.weight" and graph == "GEMMA2":
        return None
    if (graph == "GEMMA4" and name.endswith((".layer_scalar", ".experts.gate_up_proj", ".experts.down_proj"))) or (
            graph == "GPT_OSS" and name.endswith(".self_attn.sinks")):
        return name + ".weight"  # as its converter names them for the tensor map
    return name


def direct_target(config: dict, name: str) -> str | None:
    """The GGUF name of a tensor the tensor map has no entry for: Gemma 4's router scales."""
    m = re.match(r".*\.layers\.(\d+)\.router\.(scale|per_expert_scale)$", name)
    if m and ARCHS[config["architectures"][0]][0] == "GEMMA4":
        return f"blk.{m.group(1)}." + ("ffn_gate_inp.scale" if m.group(2) == "scale" else "ffn_down_exps.scale")
    return None


def norm_shift(config: dict, name: str) -> float:
    """Gemma's and Qwen3.5's RMSNorm scale by 1 + weight; llama.cpp's by the weight: its converter adds 1 (not to
    Qwen3.5's gated norm inside the linear attention, which scales by the weight)."""
    graph = ARCHS[config["architectures"][0]][0]
    if graph in QWEN35 and name.endswith("linear_attn.norm.weight"):
        return 0.0
    return 1.0 if graph in ("GEMMA2", "GEMMA3", *QWEN35) and name.endswith("norm.weight") else 0.0


def moved(config: dict, name: str) -> list | None:
    """[(the name the tensor map knows, a function of the tensor)] for tensors llama.cpp's converter changes or
    splits (Qwen3.5's linear attention, gpt-oss's experts), None for the others."""
    graph = ARCHS[config["architectures"][0]][0]
    if graph in QWEN35 and ".linear_attn." in name:
        return [linear_attention(config, name)]
    if graph == "GPT_OSS" and ".mlp.experts." in name:
        return gpt_oss_experts(name)
    if graph in ("QWEN3MOE", *QWEN35) and name.endswith(".mlp.experts.gate_up_proj"):
        base = name.removesuffix(".gate_up_proj")  # fused [experts, 2 x ff, hidden]: gate the first half
        return [(base + ".gate_proj.weight", lambda t: t[:, :t.shape[1] // 2]),
                (base + ".up_proj.weight", lambda t: t[:, t.shape[1] // 2:])]
    if graph in ("QWEN3MOE", *QWEN35) and name.endswith(".mlp.experts.down_proj"):
        return [(name + ".weight", lambda t: t)]
    return None


def gpt_oss_experts(name: str) -> list:
    """gpt-oss's fused experts as llama.cpp's converter splits them: gate_up [experts, hidden, 2 x ff] transposed,
    gate the even rows and up the odd ones (their biases likewise); down [experts, ff, hidden] transposed. MXFP4
    blocks are refused: rigtune writes the dequantized weights a merge leaves."""
    base = name.rsplit(".", 1)[0]
    if name.endswith(("_blocks", "_scales")):
        raise BadInput(f"{name} is an MXFP4 block of gpt-oss's experts; export the merged (dequantized) model, "
                       "whose experts are bf16.", key="--to")
    if name.endswith(".gate_up_proj"):
        return [(base + ".gate_proj.weight", lambda t: t.transpose(-1, -2)[:, ::2]),
                (base + ".up_proj.weight", lambda t: t.transpose(-1, -2)[:, 1::2])]
    if name.endswith(".gate_up_proj_bias"):
        return [(base + ".gate_proj.bias", lambda t: t[..., ::2]), (base + ".up_proj.bias", lambda t: t[..., 1::2])]
    if name.endswith(".down_proj"):
        return [(base + ".down_proj.weight", lambda t: t.transpose(-1, -2))]
    if name.endswith(".down_proj_bias"):
        return [(base + ".down_proj.bias", lambda t: t)]
    return None


def linear_attention(config: dict, name: str):
    """(the GGUF's source name, a function of the whole tensor) for a Qwen3.5 Gated DeltaNet tensor: A_log as
    -exp(A_log), dt_bias as dt_proj.bias, conv1d kernels without their middle axis, and where there are more value
    heads than key heads, the value heads from grouped by key head to tiled (K0, K1, K0, K1, ...), as llama.cpp's
    converter reorders them for its broadcasts."""
    import torch
    nk, nv = config["linear_num_key_heads"], config["linear_num_value_heads"]
    dv, qk = config["linear_value_head_dim"], 2 * nk * config["linear_key_head_dim"]

    def tiled(t, dim: int, head: int):
        if nv == nk:
            return t
        shape = list(t.shape)
        t = t.reshape(*shape[:dim], nk, nv // nk, head, *shape[dim + 1:])
        return t.transpose(dim, dim + 1).reshape(shape)

    def after_qk(t):
        return torch.cat([t[:qk], tiled(t[qk:], 0, dv)])
    base = name.rsplit(".", 2 if name.endswith(".weight") else 1)[0]
    if name.endswith(".A_log"):
        return name, lambda t: -torch.exp(tiled(t, 0, 1))
    if name.endswith(".dt_bias"):
        return base + ".dt_proj.bias", lambda t: tiled(t, 0, 1)
    if name.endswith(".conv1d.weight"):
        return name, lambda t: after_qk(t.squeeze(1))
    part = name.split(".linear_attn.")[1]
    return name, {"in_proj_qkv.weight": after_qk, "in_proj_z.weight": lambda t: tiled(t, 0, dv),
                  "in_proj_a.weight": lambda t: tiled(t, 0, 1), "in_proj_b.weight": lambda t: tiled(t, 0, 1),
                  "out_proj.weight": lambda t: tiled(t, 1, dv)}.get(part, lambda t: t)


def expert_groups(config: dict, names: list) -> dict:
    """Per-expert tensors (…experts.N.PROJ.weight) grouped by (experts prefix, PROJ): llama.cpp holds each layer's
    experts of a projection as one 3-D tensor, expert-major, as its converter stacks them."""
    groups: dict = {}
    for name in names:
        m = EXPERT.match(name)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = name
    count = config.get("num_local_experts") or config.get("num_experts") or 0
    for (prefix, part), found in groups.items():
        if sorted(found) != list(range(count)):
            raise BadInput(f"{prefix}.*.{part} holds experts {sorted(found)}, the config {count}.", key="--to")
    return groups
