"""Configs as transformers reads them, without torch: a config.json's missing keys take the defaults of the
architecture's own transformers config class, and a multimodal wrapper's text_config (and vision_config) are
unwrapped and filled the same way; then the Arch of the result, vision tower included.

How the defaults are read, and why not by importing the class: importing any transformers configuration
module (transformers.models.gemma3.configuration_gemma3, ...) imports transformers.configuration_utils, which
imports modeling_rope_utils and with it torch - measured with transformers 5.25: about 1.3 s, and `torch` in
sys.modules. The wizard and the planner must stay torch-free, so this module runs nothing of transformers: it
finds the installed package with importlib.util.find_spec (no import), reads model_type -> class name and
model_type -> module folder from models/auto/auto_mappings.py, and parses the configuration module with `ast`:
the defaults are the class's own annotated attributes (`vocab_size: int = 262_208`), literals evaluated by
ast.literal_eval, base classes of the same module followed; a wrapper's sub-configs are the classes its
`sub_configs_defaults` names. A few defaults live in code rather than in attributes (__post_init__): the
layer_types patterns and Gemma 4's global_head_dim; those are written out in DERIVED below, each with the
class whose __post_init__ sets it. Without transformers installed, a config plans with its own keys only.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from .blocks import FULL, LINEAR, SLIDING, Arch


@functools.cache
def _models_dir() -> Path | None:
    spec = importlib.util.find_spec("transformers")  # finds the package; imports nothing of it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _literal_dict(node: ast.AST) -> dict:
    """An OrderedDict([(k, v), ...]) or {k: v} literal of auto_mappings.py."""
    if isinstance(node, ast.Call) and node.args:
        return {k: v for k, v in ast.literal_eval(node.args[0])}
    return ast.literal_eval(node)


@functools.cache
def _mappings() -> tuple:
    """(model_type -> config class name, model_type -> module folder) from transformers' auto mappings."""
    models = _models_dir()
    path = models / "auto" / "auto_mappings.py" if models else None
    if path is None or not path.is_file():
        return {}, {}
    found = {}
    try:  # another transformers release may write these differently: then the file's own keys, as without it
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                if node.targets[0].id in ("CONFIG_MAPPING_NAMES", "SPECIAL_MODEL_TYPE_TO_MODULE_NAME"):
                    found[node.targets[0].id] = _literal_dict(node.value)
    except (SyntaxError, ValueError, TypeError):
        return {}, {}
    return found.get("CONFIG_MAPPING_NAMES", {}), found.get("SPECIAL_MODEL_TYPE_TO_MODULE_NAME", {})


@functools.cache
def _module_classes(module: str) -> dict:
    """{class name: ast.ClassDef} of models/<module>/configuration_<module>.py."""
    models = _models_dir()
    path = models / module / f"configuration_{module}.py" if models else None
    if path is None or not path.is_file():
        return {}
    return {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}


def _locate(model_type: str) -> tuple:
    """(module folder, config class name) of a model_type, or ("", "")."""
    names, special = _mappings()
    cls = names.get(model_type, "")
    return (special.get(model_type, model_type.replace("-", "_")) if cls else ""), cls


def _class_defaults(module: str, cls: str) -> dict:
    """The literal class-attribute defaults of a config class, its same-module bases' first."""
    classes = _module_classes(module)
    node = classes.get(cls)
    if node is None:
        return {}
    out: dict = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id in classes and base.id != cls:
            out.update(_class_defaults(module, base.id))
    for stmt in node.body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (
            stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None)
        if isinstance(target, ast.Name) and stmt.value is not None:
            try:
                out[target.id] = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                pass  # not a literal (a validator, a class): transformers sets it in code
    return out


@functools.cache
def defaults(model_type: str) -> dict:
    """The defaults of model_type's transformers config class ({} when transformers does not know it)."""
    module, cls = _locate(model_type)
    return _class_defaults(module, cls) if cls else {}


def _sub_config_type(model_type: str, key: str) -> str:
    """The model_type of a wrapper's sub-config (text_config, vision_config), from its sub_configs_defaults."""
    module, cls = _locate(model_type)
    node = _module_classes(module).get(cls) if cls else None
    for stmt in node.body if node else ():
        if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "sub_configs_defaults":
            for k, v in zip(stmt.value.keys, stmt.value.values):
                if getattr(k, "value", None) != key:
                    continue
                if isinstance(v, ast.Name):  # a class of the same module
                    return str(_class_defaults(module, v.id).get("model_type", ""))
                spec = {kw.arg: kw.value for kw in getattr(v, "keywords", ())}  # SubConfigSpec(config_class=...,
                if "model_type" in spec:                                        # model_type=...)
                    return str(ast.literal_eval(spec["model_type"]))
                if isinstance(spec.get("config_class"), ast.Name):
                    return str(_class_defaults(module, spec["config_class"].id).get("model_type", ""))
    return ""


def _filled(sub: dict, model_type: str) -> dict:
    """`sub` over its class's defaults, read through the class's attribute_map as transformers does: a key the
    map renames (Qwen3-MoE's num_experts, stored as num_local_experts) sets the attribute it names, and both
    names read the same value afterwards."""
    if not model_type:
        return dict(sub)
    base = defaults(model_type)
    names = base.get("attribute_map") if isinstance(base.get("attribute_map"), dict) else {}
    out = {**base, **{names.get(k, k): v for k, v in sub.items()}}
    out.update({alias: out[name] for alias, name in names.items() if name in out})
    return out


@functools.cache
def _causal_lm_classes() -> dict:
    """model_type -> the class AutoModelForCausalLM builds, from transformers' modeling_auto.py (read, not run)."""
    models = _models_dir()
    path = models / "auto" / "modeling_auto.py" if models else None
    if path is None or not path.is_file():
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES":
            return _literal_dict(node.value)
    return {}


def vision_loaded(model_type: str) -> bool:
    """Whether AutoModelForCausalLM (what rigtune trains with) loads a wrapper's vision tower: it does where it
    builds the ForConditionalGeneration class (Gemma 3, Gemma 4), not where it builds the text model's
    ForCausalLM (Qwen3.5, "VLM compatibility"), which leaves the tower's weights unread."""
    return not _causal_lm_classes().get(model_type, "ConditionalGeneration").endswith("ForCausalLM")


def global_attention(text: dict) -> tuple:
    """(head size, kv heads) of Gemma 4's full-attention layers: per_layer_config's overrides where the file has
    them (transformers 5.25 saves that form), else global_head_dim / num_global_key_value_heads."""
    layers = text.get("per_layer_config")
    if isinstance(layers, dict) and layers:
        first = next(iter(layers.values()))
        return int(first.get("head_dim") or GEMMA4_GLOBAL_HEAD_DIM), int(first.get("num_key_value_heads") or 0)
    kv = int(text.get("num_global_key_value_heads") or 0) if text.get("attention_k_eq_v") else 0
    return int(text.get("global_head_dim") or GEMMA4_GLOBAL_HEAD_DIM), kv


def resolve(config: dict) -> tuple:
    """(text config, vision config or None, outer config) as transformers reads them: a wrapper unwrapped to its
    text_config, each filled with its class's defaults (a sub-config's model_type from the wrapper's class when the
    file leaves it out)."""
    outer_type = str(config.get("model_type") or "")
    text_type = _sub_config_type(outer_type, "text_config") if outer_type else ""
    if isinstance(config.get("text_config"), dict) or text_type:
        raw = config.get("text_config") or {}
        text = _filled(raw, str(raw.get("model_type") or text_type))
        if "tie_word_embeddings" not in raw and "tie_word_embeddings" in config:
            text["tie_word_embeddings"] = config["tie_word_embeddings"]  # the wrapper's own key
    else:
        text = _filled(config, outer_type)
    vision = config.get("vision_config")
    if isinstance(vision, dict):
        vision_type = _sub_config_type(outer_type, "vision_config") or str(vision.get("model_type") or "")
        vision = {**_filled(vision, vision_type), "model_type": vision_type}  # the class decides, as in transformers
    else:
        vision = None
    return text, vision, config


# defaults transformers sets in __post_init__ rather than as class attributes, by text model_type prefix:
# (the layer_types pattern: every n-th layer is full attention and the others this kind), global_head_dim
DERIVED = {"qwen3_5": (LINEAR, "full_attention_interval", 4),   # Qwen3_5TextConfig, Qwen3_5MoeTextConfig
           "qwen3_next": (LINEAR, "full_attention_interval", 4),  # Qwen3NextConfig
           "gemma4": (SLIDING, "sliding_window_pattern", 6),      # Gemma4TextConfig
           "gemma3": (SLIDING, "sliding_window_pattern", 6),      # Gemma3TextConfig
           "gpt_oss": (SLIDING, "", 2)}                           # GptOssConfig: sliding and full, alternating
GEMMA4_GLOBAL_HEAD_DIM = 512                                      # Gemma4TextConfig.__post_init__


def layer_types(text: dict, model_type: str) -> tuple:
    given = text.get("layer_types")
    if isinstance(given, list) and given:
        return tuple(str(t) for t in given)
    for prefix, (kind, key, every) in DERIVED.items():
        if model_type.startswith(prefix):
            n = int(text.get(key) or every)
            return tuple(kind if (i + 1) % n else FULL for i in range(int(text["num_hidden_layers"])))
    return ()


def family_shape(model_type: str) -> dict:
    """What a family's block has beyond Llama's, by model_type."""
    return {"extra_norms": 2 if model_type.startswith("gemma") else 0,
            "qkv_bias": model_type == "qwen2", "fused": model_type in ("phi3", "phi4"),
            "qk_norm": model_type.startswith(("qwen3", "gemma3", "gemma4"))}


def vision_params(vision: dict, text_hidden: int) -> int:
    """A vision tower and its projector into the text model, from its (filled) vision_config, by model_type."""
    kind = str(vision.get("model_type") or "")
    h, i = vision.get("hidden_size", 0), vision.get("intermediate_size", 0)
    if kind in ("qwen3_5", "qwen3_5_vision", "qwen3_5_moe_vision", "qwen3_vl"):  # Qwen3.5: ViT with a 2x2 merger
        layers, patch = vision.get("depth", 0), vision.get("patch_size", 16)
        embed = vision.get("in_channels", 3) * vision.get("temporal_patch_size", 2) * patch * patch * h + h
        embed += vision.get("num_position_embeddings", 0) * h
        per_layer = 4 * h + 3 * h * h + 3 * h + h * h + h + 2 * h * i + i + h  # two LayerNorms, qkv, proj, MLP
        merged = h * vision.get("spatial_merge_size", 2) ** 2
        out = vision.get("out_hidden_size", text_hidden)
        return embed + layers * per_layer + 2 * h + merged * merged + merged + merged * out + out
    if kind == "gemma4_vision":  # Gemma 4: RMSNorm blocks with q/k norms, a pooler, a projector without bias
        layers, hd = vision.get("num_hidden_layers", 0), vision.get("head_dim", 0)
        q = vision.get("num_attention_heads", 0) * hd
        kv = vision.get("num_key_value_heads", 0) * hd
        embed = 2 * vision.get("position_embedding_size", 0) * h + 3 * vision.get("patch_size", 16) ** 2 * h
        per_layer = h * q + 2 * h * kv + q * h + 2 * hd + 3 * h * i + 4 * h
        return embed + layers * per_layer + h * text_hidden
    # SigLIP (Gemma 3)
    layers = vision.get("num_hidden_layers", 0)
    patch, image, channels = vision.get("patch_size", 14), vision.get("image_size", 224), vision.get("num_channels", 3)
    per_layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h  # attention with biases, MLP with biases, two LayerNorms
    embed = channels * patch * patch * h + h + (image // patch) ** 2 * h
    head = h + 4 * (h * h + h) + 2 * h + 2 * h * i + i + h if vision.get("vision_use_head", True) else 0  # pooling
    return layers * per_layer + embed + 2 * h + head + h * text_hidden + h


def build_arch(config: dict, name: str, hf_id: str = "") -> Arch:
    """The Arch of a config.json as transformers reads it. KeyError or TypeError when a key it needs has no
    value and no default (arch.arch_from_config turns that into BadInput)."""
    text, vision, outer = resolve(config)
    model_type = str(outer.get("model_type") or text.get("model_type") or "")
    text_type = str(text.get("model_type") or model_type)
    heads = text["num_attention_heads"]
    experts = int(text.get("num_experts") or text.get("num_local_experts") or 0)
    moe_block = bool(text.get("enable_moe_block", True))
    experts = experts if moe_block else 0
    hidden = text["hidden_size"]
    shape = family_shape(model_type)
    gemma4 = text_type.startswith("gemma4")
    if gemma4 and experts:
        shape["extra_norms"] = 5  # a second pre- and post-feedforward norm around the experts, and one after both
    k_eq_v = bool(text.get("attention_k_eq_v")) and gemma4
    types = layer_types(text, text_type)
    linear = any(t == LINEAR for t in types)
    global_heads = global_attention(text) if gemma4 else (0, 0)
    if not (text.get("intermediate_size") or (experts and text.get("moe_intermediate_size"))):
        raise KeyError("intermediate_size")  # no MLP width: not a shape the planner can count
    return Arch(
        name=name, hf_id=hf_id, layers=text["num_hidden_layers"], hidden=hidden,
        intermediate=int(text.get("intermediate_size") or 0) if (not experts or gemma4) else
        int(text.get("intermediate_size") or text.get("moe_intermediate_size") or 0),
        heads=heads, kv_heads=text.get("num_key_value_heads") or heads, vocab=text["vocab_size"],
        tied=bool(text.get("tie_word_embeddings", False)), head_dim=int(text.get("head_dim") or 0),
        model_type=model_type, **shape, experts=experts,
        experts_active=int(text.get("num_experts_per_tok") or text.get("top_k_experts") or 0) if experts else 0,
        expert_intermediate=int(text.get("moe_intermediate_size") or text.get("intermediate_size") or 0)
        if experts else 0,
        extra_params=vision_params(vision, hidden) if vision is not None else 0,
        vision_loaded=vision is None or vision_loaded(model_type),
        layer_types=types if len(set(types)) > 1 or linear else (),
        sliding_window=int(text.get("sliding_window") or 0) if SLIDING in types else 0,
        attn_gate=linear and (text_type.startswith("qwen3_5") or bool(text.get("attn_output_gate"))),  # transformers
        # builds Qwen3.5's q_proj gated whatever the file says (its config class has no attn_output_gate)
        global_head_dim=global_heads[0], global_kv_heads=global_heads[1], k_eq_v=k_eq_v,
        linear_k_heads=int(text.get("linear_num_key_heads") or 0) if linear else 0,
        linear_v_heads=int(text.get("linear_num_value_heads") or 0) if linear else 0,
        linear_k_dim=int(text.get("linear_key_head_dim") or 0) if linear else 0,
        linear_v_dim=int(text.get("linear_value_head_dim") or 0) if linear else 0,
        linear_conv=int(text.get("linear_conv_kernel_dim") or 0) if linear else 0,
        shared_expert_intermediate=int(text.get("shared_expert_intermediate_size") or 0) if experts else 0,
        moe_and_mlp=gemma4 and bool(experts), router_scales=gemma4 and bool(experts),
        router_bias=text_type == "gpt_oss", expert_bias=text_type == "gpt_oss",
        attn_bias=bool(text.get("attention_bias")) and text_type == "gpt_oss", sinks=text_type == "gpt_oss",
        per_layer_input=int(text.get("hidden_size_per_layer_input") or 0) if gemma4 else 0,
        per_layer_vocab=int(text.get("vocab_size_per_layer_input") or 0) if gemma4 and
        text.get("hidden_size_per_layer_input") else 0,
        kv_shared_layers=int(text.get("num_kv_shared_layers") or 0) if gemma4 else 0,
        double_wide_mlp=bool(text.get("use_double_wide_mlp")) and gemma4)
