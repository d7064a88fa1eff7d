"""Architecture from config: the shape of a decoder-only model (Arch), read from presets/models.toml, a
config.json (local folder, path, or the hub's, a few KB) or a multimodal config's text model, and whether this
stack can train it. Everything the memory terms count (linears, experts, embeddings, norms, a vision tower)
derives from these shapes."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import presets

from ..errors import BadInput
from .blocks import GIB, Arch
from .configs import build_arch, family_shape, vision_loaded, vision_params

__all__ = ["GIB", "Arch", "family_shape", "vision_params", "arch_from_config", "load_models", "catalog_model",
           "config_path", "read_config", "model_config", "resolve_model", "trainable", "FAMILIES"]


@functools.cache
def load_models() -> dict:
    """{name: Arch} of presets/models.toml. An entry's layer_pattern (the config's layer_types as the repeating
    unit) is repeated over its layers; extra_params_b (billions) is the vision tower's count; published_* keys say
    how the published counts were counted and are not part of the shape."""
    out = {}
    for name, facts in presets.load_models().items():
        facts = {**family_shape(facts.get("model_type", "llama")), **facts}
        if "extra_params_b" in facts:
            facts["extra_params"] = round(facts.pop("extra_params_b") * 1e9)
            facts.setdefault("vision_loaded", vision_loaded(facts.get("model_type", "llama")))
        facts = {k: v for k, v in facts.items() if not k.startswith("published_")}  # notes for tests/test_catalog.py
        pattern = facts.pop("layer_pattern", None)
        if pattern:
            facts["layer_types"] = tuple(pattern[i % len(pattern)] for i in range(facts["layers"]))
        out[name] = Arch(name=name, **facts)
    return out


# model_type -> the family rigtune trains, each tested end to end on a tiny copy (tests/test_families.py)
FAMILIES = {"llama": "Llama 2, Llama 3.x, CodeLlama", "mistral": "Mistral 7B, Mistral Small", "qwen2": "Qwen2.5",
            "qwen3": "Qwen3", "qwen3_moe": "Qwen3 MoE", "mixtral": "Mixtral", "gemma2": "Gemma 2",
            "gemma3": "Gemma 3 (the text model trains; its vision tower is loaded, frozen)",
            "gemma3_text": "Gemma 3 text-only", "phi3": "Phi-3, Phi-4",
            "qwen3_5": "Qwen3.5, Qwen3.6 (Gated DeltaNet linear attention; its text model loads and trains)",
            "qwen3_5_moe": "Qwen3.5 / 3.6 MoE (linear attention, routed and shared experts; its text model)",
            "gemma4": "Gemma 4 (the text model trains; its vision tower is loaded, frozen; 26B-A4B's MoE block too)",
            "gemma4_text": "Gemma 4 text-only", "gpt_oss": "gpt-oss (attention sinks, sliding windows, biased experts)"}


def arch_from_config(config: dict, name: str, hf_id: str = "") -> Arch:
    """The Arch of a config.json as transformers reads it: missing keys take the defaults of the architecture's
    transformers config class, a multimodal wrapper is unwrapped to its text_config, its vision tower counted."""
    try:
        return build_arch(config, name, hf_id)
    except (KeyError, TypeError) as e:
        raise BadInput(f"config.json lacks {e.args[0]!r}; rigtune plans decoder-only language models "
                       f"({', '.join(sorted(FAMILIES))}).", path=name) from None
    except (AttributeError, ValueError) as e:  # a key of the wrong kind (a list where a table belongs, ...)
        raise BadInput(f"config.json holds a value rigtune cannot read as a model's shape ({e}); give the model's "
                       "own config.json as published.", path=name) from None


def catalog_model(spec: str) -> Arch | None:
    """The models.toml entry named `spec` (by name or hub id, any case), or None."""
    for name, arch in load_models().items():
        if spec.lower() in (name.lower(), arch.hf_id.lower()):
            return arch
    return None


def config_path(spec: str) -> Path | None:
    """The config.json of a local model folder or a config.json path, or None."""
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "config.json"
    return p if p.is_file() else None


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"not a readable config.json ({e}).", path=str(path)) from None
    if not isinstance(config, dict):
        raise BadInput("not a model config (a JSON object with the model's settings).", path=str(path))
    return config


def model_config(spec: str, online: bool = False, revision: str | None = None) -> tuple[dict, str]:
    """(config.json as a dict, where it came from) of a local folder, a config.json path, or a hub id: from the
    local Hugging Face cache or - with online - fetched from the hub (a few KB). BadInput when it cannot be had."""
    path = config_path(spec)
    if path is not None:
        return read_config(path), str(path)
    from .. import hub
    from ..modelref import HUB_ID, looks_like_path
    if HUB_ID.match(spec) and not looks_like_path(spec):
        found = hub.fetch_config(spec, revision) if online else hub.cached_file(spec, "config.json", revision)
        if found is not None:  # fetch_config answers from the cache first, and raises what it cannot have
            return read_config(found), spec
        raise BadInput(f"{spec!r} is not in presets/models.toml and its config.json is not in the Hugging Face "
                       "cache yet; `rigtune plan --model " + spec + "` fetches it (a few KB).", key="--model")
    raise BadInput(f"unknown model '{spec}'; give a name from presets/models.toml ({', '.join(load_models())}), a "
                   "Hugging Face id, a local model folder, or the path of a config.json.", key="--model")


def resolve_model(spec: str, online: bool = False, revision: str | None = None) -> Arch:
    """A name from models.toml (or its hf_id), a local model folder, a config.json path, or any hub id: from
    the local Hugging Face cache, or - with online - fetched from the hub (config.json only, a few KB)."""
    known = catalog_model(spec)
    if known is not None:
        return known
    config, where = model_config(spec, online, revision)
    local = config_path(spec) is not None  # a folder or a config.json path is never a hub id, whatever its spelling
    return arch_from_config(config, where, hf_id="" if local else spec)


def trainable(config: dict, strategy: str = "single", trust_remote_code: bool = False) -> tuple[str | None, str | None]:
    """(why this stack cannot train the model, a warning) from its config.json, before anything downloads."""
    text = config.get("text_config") or config
    model_type = str(config.get("model_type") or "")
    quant = config.get("quantization_config") or text.get("quantization_config")
    if quant and not (quant.get("quant_method") == "mxfp4" and "gpt_oss" in (model_type, text.get("model_type"))):
        # gpt-oss's MXFP4 experts are read into NF4 as they load (engine.torchside.experts); nothing else is
        return (f"this checkpoint is already quantized ({quant.get('quant_method', 'quantized')}); QLoRA loads a 16-bit "
                "checkpoint and quantizes it to NF4 itself: use the original (bf16) repository."), None
    if config.get("is_encoder_decoder"):
        return f"{model_type or 'this model'} is an encoder-decoder; rigtune fine-tunes decoder-only language models.", None
    archs = config.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")) for a in archs):
        return (f"{', '.join(archs)} is not a causal language model (no ...ForCausalLM); rigtune fine-tunes "
                "decoder-only language models."), None
    experts = text.get("num_experts") or text.get("num_local_experts")
    if strategy == "fsdp" and (experts or "vision_config" in config):
        what = "a mixture-of-experts model" if experts else "a model with a vision tower"
        return (f"FSDP with {what} is not verified in rigtune yet; use strategy = \"single\" or \"ddp\" (each card "
                "holds the whole 4-bit model)."), None
    if model_type not in FAMILIES:
        if "auto_map" in config and not trust_remote_code:
            return (f"model type {model_type!r} needs the repository's own Python code; set [model] "
                    "trust_remote_code = true only if you trust its authors."), None
        return None, (f"model type {model_type!r} is not one rigtune has tested ({', '.join(sorted(FAMILIES))}); "
                      "its plan assumes a Llama-style block.")
    return None, None
