"""Architecture from config: the shape of a decoder-only model (Arch), read from presets/models.toml, a
config.json (local folder, path, or the hub's, a few KB) or a multimodal config's text model, and whether this
stack can train it. Everything the memory terms count (linears, experts, embeddings, norms, a vision tower)
derives from these shapes."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import presets

from ..errors import BadInput

GIB = 1024 ** 3


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder-only model, from its config.json (or presets/models.toml, which copies it)."""
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False
    hf_id: str = ""
    size: str = ""
    params_b: float = 0.0            # the published total (models.toml): what total_params is checked against
    head_dim: int = 0                # when the config sets it apart from hidden / heads (Qwen3, Gemma 3)
    extra_norms: int = 0             # RMSNorms per layer beyond Llama's two (Gemma 2/3: two more around the MLP)
    qk_norm: bool = False            # RMSNorm on each head's queries and keys (Qwen3, Gemma 3)
    qkv_bias: bool = False           # biases on q, k and v (Qwen2.5)
    model_type: str = "llama"        # the config's model_type
    fused: bool = False              # Phi-3/4: one qkv_proj and one gate_up_proj instead of q/k/v and gate/up
    experts: int = 0                 # MoE: experts per layer (0 = a dense MLP)
    experts_active: int = 0          # MoE: experts each token goes through
    expert_intermediate: int = 0     # MoE: one expert's intermediate size
    extra_params: int = 0            # loaded with the model but outside the decoder (Gemma 3's vision tower)
    active_params_b: float = 0.0     # the published active count of an MoE model (models.toml)
    gated: bool = False              # the hub asks to accept a licence before downloading (models.toml)
    source: str = ""                 # where the catalog's numbers come from (models.toml)
    download_bytes: int = 0          # the weights' size from the hub's listing (0: not known; 16-bit assumed)

    @property
    def download_gib(self) -> float:
        """What the download of the weights takes: the listing's size, else the 16-bit checkpoint's."""
        return (self.download_bytes or self.total_params * 2) / GIB

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.head_size * self.heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.kv_heads

    def linears(self) -> dict:
        """(in, out) of each nn.Linear in one decoder block: what bitsandbytes quantizes and LoRA can target.
        An MoE block's experts are fused 3-D parameters, not linears: this stack keeps them in the compute
        dtype (DESIGN.md section 4) and LoRA does not reach them."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        attn = ({"qkv_proj": (h, q + 2 * kv)} if self.fused else
                {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv)})
        attn["o_proj"] = (q, h)
        if self.experts:
            return attn
        mlp = {"gate_up_proj": (h, 2 * i)} if self.fused else {"gate_proj": (h, i), "up_proj": (h, i)}
        return {**attn, **mlp, "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def expert_params(self) -> int:
        """Every expert's gate, up and down weights, plus the routers: all resident, in the compute dtype."""
        return self.layers * self.experts * (3 * self.hidden * self.expert_intermediate + self.hidden)

    @property
    def active_expert_params(self) -> int:
        """The expert weights one token runs through (its top-k experts), plus the router."""
        return self.layers * (self.experts_active * 3 * self.hidden * self.expert_intermediate
                              + self.experts * self.hidden)

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def norm_params(self) -> int:
        return self.layers * ((2 + self.extra_norms) * self.hidden + (2 * self.head_size if self.qk_norm else 0)
                              + (self.q_dim + 2 * self.kv_dim if self.qkv_bias else 0)) + self.hidden

    @property
    def total_params(self) -> int:
        return self.linear_params + self.expert_params + self.embed_params + self.norm_params + self.extra_params

    @property
    def active_params(self) -> int:
        """Parameters one token's forward pass uses: the total less the experts it is not routed to."""
        return self.total_params - self.expert_params + self.active_expert_params


def family_shape(model_type: str) -> dict:
    """What a family's block has beyond Llama's, by model_type."""
    return {"extra_norms": 2 if model_type.startswith("gemma") else 0, "qkv_bias": model_type == "qwen2",
            "qk_norm": model_type.startswith(("qwen3", "gemma3")), "fused": model_type in ("phi3", "phi4")}


@functools.cache
def load_models() -> dict:
    out = {}
    for name, facts in presets.load_models().items():
        facts = {**family_shape(facts.get("model_type", "llama")), **facts}
        if "extra_params_b" in facts:
            facts["extra_params"] = round(facts.pop("extra_params_b") * 1e9)
        out[name] = Arch(name=name, **facts)
    return out


# model_type -> the family rigtune trains, each tested end to end on a tiny copy (tests/test_families.py)
FAMILIES = {"llama": "Llama 2, Llama 3.x, CodeLlama", "mistral": "Mistral 7B, Mistral Small", "qwen2": "Qwen2.5",
            "qwen3": "Qwen3", "qwen3_moe": "Qwen3 MoE", "mixtral": "Mixtral", "gemma2": "Gemma 2",
            "gemma3": "Gemma 3 (the text model trains; its vision tower is loaded, frozen)",
            "gemma3_text": "Gemma 3 text-only", "phi3": "Phi-3, Phi-4"}


def vision_params(vision: dict, text_hidden: int) -> int:
    """A SigLIP vision tower (Gemma 3) and the projector into the text model, from its vision_config."""
    h, i, layers = vision.get("hidden_size", 0), vision.get("intermediate_size", 0), vision.get("num_hidden_layers", 0)
    patch, image, channels = vision.get("patch_size", 14), vision.get("image_size", 224), vision.get("num_channels", 3)
    per_layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h  # attention with biases, MLP with biases, two LayerNorms
    embed = channels * patch * patch * h + h + (image // patch) ** 2 * h
    head = h + 4 * (h * h + h) + 2 * h + 2 * h * i + i + h if vision.get("vision_use_head", True) else 0  # pooling
    return layers * per_layer + embed + 2 * h + head + h * text_hidden + h


def arch_from_config(config: dict, name: str, hf_id: str = "") -> Arch:
    """The Arch of a config.json (a multimodal one's text_config, with its vision tower counted)."""
    outer = config
    config = config.get("text_config") or config
    model_type = str(outer.get("model_type") or config.get("model_type") or "")
    try:
        heads = config["num_attention_heads"]
        experts = int(config.get("num_experts") or config.get("num_local_experts") or 0)
        return Arch(name=name, hf_id=hf_id, layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                    intermediate=config["intermediate_size"], heads=heads,
                    kv_heads=config.get("num_key_value_heads") or heads, vocab=config["vocab_size"],
                    tied=bool(config.get("tie_word_embeddings", outer.get("tie_word_embeddings", False))),
                    head_dim=int(config.get("head_dim") or 0), model_type=model_type, **family_shape(model_type),
                    experts=experts, experts_active=int(config.get("num_experts_per_tok") or 0) if experts else 0,
                    expert_intermediate=int(config.get("moe_intermediate_size") or config["intermediate_size"])
                    if experts else 0,
                    extra_params=vision_params(outer["vision_config"], config["hidden_size"])
                    if isinstance(outer.get("vision_config"), dict) else 0)
    except (KeyError, TypeError) as e:
        raise BadInput(f"config.json lacks {e.args[0]!r}; rigtune plans decoder-only language models "
                       f"({', '.join(sorted(FAMILIES))}).", path=name) from None


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
    return arch_from_config(config, where, hf_id=spec if where == spec else "")


def trainable(config: dict, strategy: str = "single", trust_remote_code: bool = False) -> tuple[str | None, str | None]:
    """(why this stack cannot train the model, a warning) from its config.json, before anything downloads."""
    text = config.get("text_config") or config
    model_type = str(config.get("model_type") or "")
    quant = config.get("quantization_config") or text.get("quantization_config")
    if quant:
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
