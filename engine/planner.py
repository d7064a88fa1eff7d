"""The memory planner: per-GPU memory of a QLoRA run from first principles, before anything downloads.

Every term is named in the breakdown (GiB per GPU):
  weights      quantized linear layers at ~4.127 bits/param (NF4 + double quant; 4.5 without), embeddings,
               lm_head and norms in the compute dtype; under FSDP a shard plus the layers being gathered
  adapters     LoRA A and B matrices (fp32 unless lora_dtype says otherwise)
  gradients    one gradient per adapter parameter (+ DDP's bucket copy)
  optimizer    AdamW 32-bit: 8 B per adapter parameter; 8-bit: 2 B
  activations  what backward needs: with gradient checkpointing one hidden state per layer plus one layer
               recomputed in full; without, every layer's saved tensors; eager attention adds the s^2 scores
  logits       the loss's peak: the output logits, their fp32 upcast, log-softmax and its gradient (one chunk
               of them with the chunked loss; Liger's fused loss holds a smaller chunk)
  overhead     CUDA context, the dequantized weight of the widest layer, and allocator fragmentation
Each constant below is derived, or calibrated on a set of points kept apart from the points its accuracy is
reported on (bench/planner_accuracy). The time estimate (tokens/s, duration) follows the memory model.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import presets

from .errors import BadInput
from .events import METRICS, PLAN

GIB = 1024 ** 3

# --- constants (bench/planner_accuracy explains each figure and says which points calibrate it)
NF4_BITS = {True: 4.127, False: 4.5}     # bits per quantized parameter, with / without double quant (derived:
                                         # 4 bits + one absmax per 64 weights, itself 8-bit per 256 blocks)
CUDA_CONTEXT_GIB = 0.5                   # CUDA context, cuBLAS workspace, kernels: outside torch's allocator
FRAGMENTATION = 0.05                     # caching-allocator slack: reserved over allocated at the peak (0.048
                                         # on the calibration set of rigtune's own H200 runs, planner_accuracy)
PROCESS_RAM_GIB = 3.0                    # host RAM per training process (torch, CUDA libraries, buffers)
# bytes per (token x vocab entry) of the loss at its peak, beyond the lm_head's own output (2 B in bf16; in
# fp32 - compute_dtype float32, or lm_head upcast by prepare_model_for_kbit_training - the output is the fp32
# copy; bench/planner_selfcheck measures 12 B there):
#   rigtune: fp32 copy 4 + log-softmax 4 + its gradient 4
#   hf: the same plus the shifted contiguous fp32 copy transformers' loss made before 4.46
#   chunked: the fp32 work happens one chunk (1/8) at a time
#   hf_half: a transformers-style loss on half-precision logits, never upcast (Qwen-1's remote code): the
#            shifted copy 2 + log-softmax 2 + its gradient 2 + the input's gradient 2 (bench/planner_accuracy)
LOSS_BYTES = {"rigtune": 12.0, "hf": 16.0, "chunked": 12.0 / 8, "hf_half": 8.0}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


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


@dataclass
class PlanInput:
    arch: Arch
    gpus: list                       # GiB of each card taking part (per machine)
    seq_len: int = 2048
    micro_batch: int = 1
    lora_r: int = 16
    lora_targets: object = "all-linear"
    lora_dropout: float = 0.05
    lora_dtype: str = "float32"
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = True
    attn: str = "sdpa"
    quantization: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    strategy: str = "single"
    cpu_offload: bool = False
    ram_gib: float | None = None
    loss: str = "rigtune"
    upcast: bool = False             # prepare_model_for_kbit_training: unquantized weights in fp32
    loss_chunk: int = 0              # rigtune's chunked loss: tokens per chunk (0 = full logits)
    link: str = "nvlink"             # between the cards: nvlink | p2p (PCIe peer-to-peer) | host (through RAM)
    activation_offload: bool = False  # saved activations wait in CPU RAM; one layer's worth on the GPU
    shard_adapters: bool = True      # under FSDP with AdamW 32-bit: adapters, gradients, state sharded too
    accum: int = 1                   # gradient accumulation steps (kept with the micro-batch by suggest())
    kernels: str = "none"            # liger: Liger's fused kernels (what kernels = "auto" runs on a CUDA card)
    card: str = ""                   # a name from presets/cards.toml: the time estimate's card ("" = unknown)


@dataclass
class Plan:
    per_gpu_peak_gib: float
    breakdown_gib: dict
    fits: bool
    max_seq_len: int
    max_micro_batch: int
    strategy: str
    cpu_offload: bool
    notes: list = field(default_factory=list)
    suggestion: dict | None = None
    ram_needed_gib: float = 0.0
    gpu_gib: float = 0.0
    card: str = ""
    tokens_per_s_estimate: float | None = None
    duration_s_estimate: float | None = None
    suggestion_steps: list = field(default_factory=list)  # what each change in `suggestion` does, in words
    arch: str = ""                   # the config's model_type
    params_b: float = 0.0            # total parameters, billions (every expert of an MoE model)
    active_params_b: float = 0.0     # parameters a token runs through (= params_b for a dense model)
    download_gib: float = 0.0        # the weights' download

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- models

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
    from . import hub
    from .modelref import HUB_ID, looks_like_path
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


# ---------------------------------------------------------------------------- the memory model

def _targets(inp: PlanInput) -> list:
    """The block's linears LoRA wraps: all of them for "all-linear", else the named ones this block has."""
    shapes = inp.arch.linears()
    if inp.lora_targets == "all-linear":
        return list(shapes)
    names = [inp.lora_targets] if isinstance(inp.lora_targets, str) else list(inp.lora_targets)
    known = {"output_proj": "o_proj", "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
    return [known.get(n, n) for n in names if known.get(n, n) in shapes]


def adapter_params(inp: PlanInput) -> int:
    shapes = inp.arch.linears()
    return inp.arch.layers * sum(inp.lora_r * (shapes[t][0] + shapes[t][1]) for t in _targets(inp))


def linear_bytes(inp: PlanInput) -> float:
    """Bytes per parameter of the (quantized) linear layers' weights."""
    return NF4_BITS[inp.double_quant] / 8 if inp.quantization in ("nf4", "fp4") else DTYPE_BYTES[inp.compute_dtype]


def breakdown(inp: PlanInput) -> dict:
    """GiB per GPU for each term, for the strategy and offload in `inp`."""
    a = inp.arch
    cb = DTYPE_BYTES[inp.compute_dtype]
    n = len(inp.gpus) if inp.strategy == "fsdp" else 1
    s, b = inp.seq_len, inp.micro_batch
    tokens = s * b
    h, i, q, kv = a.hidden, a.intermediate, a.q_dim, a.kv_dim

    # weights
    linear = a.linear_params * linear_bytes(inp)
    other = (a.embed_params + a.norm_params + a.extra_params) * (4 if inp.upcast else cb) + a.expert_params * cb
    if inp.strategy == "fsdp":
        layer = (linear + a.expert_params * cb) / a.layers
        gathered = 2 * max(layer + 2 * h * cb, a.vocab * h * cb / (1 if inp.cpu_offload else n))
        weights = gathered if inp.cpu_offload else (linear + other) / n + gathered
        if inp.loss == "rigtune" and inp.loss_chunk and not a.tied and not inp.cpu_offload:
            weights += a.vocab * h * cb * (1 - 1 / n)  # engine.torchside.fsdp keeps the lm_head whole for the chunked loss
    else:
        weights, gathered = linear + other, 0

    # adapters, gradients, optimizer: engine.torchside.fsdp shards them over the ranks (AdamW 32-bit), with two
    # layers' adapters gathered at a time and a layer's gradients whole until they are reduce-scattered; with
    # CPU offload the shards and the optimizer step live in RAM. 8-bit optimizers keep them whole on every
    # rank (and DDP keeps a bucket copy of the gradients).
    p = adapter_params(inp)
    lb = DTYPE_BYTES[inp.lora_dtype]
    if adapters_sharded(inp):
        in_flight = 2 * p / a.layers * lb
        own = 0 if inp.cpu_offload else p * lb / n
        adapters, gradients = own + in_flight, own + in_flight
        optimizer = 0 if inp.cpu_offload else 2 * p * lb / n
    else:
        adapters = p * lb
        gradients = p * lb * (2 if inp.strategy == "ddp" else 1)
        optimizer = p * (2 * lb if inp.optimizer == "adamw_torch" else 2)  # AdamW keeps 2 states in the param dtype

    # activations, per token: saved tensors of one decoder layer
    # the MLP's: gate and up outputs, the activation and the product. An MoE block (transformers' grouped_mm
    # experts), for each of the token's top-k experts: the gate/up output, the activation and the expert's
    # output (kept for the routing weight's gradient) - not the gathered input nor the product, which only
    # the frozen experts' weight gradients would need (torch saves neither then) - plus the router's fp32
    # scores. bench/planner_selfcheck measures it on the Qwen3-30B-A3B shape.
    mlp = (a.experts_active * (3 * a.expert_intermediate + h) + 2 * a.experts) if a.experts else 4 * i
    per_layer = cb * (4 * h + 3 * q + 3 * kv + mlp + a.extra_norms * h + (q + kv if a.qk_norm else 0))
    shapes = a.linears()
    if inp.lora_dropout > 0:  # each adapter keeps its own dropped-out input
        per_layer += cb * sum(shapes[t][0] for t in _targets(inp))
    per_layer += 4 * inp.lora_r * len(_targets(inp))
    if inp.attn == "eager":
        per_layer += 2 * cb * a.heads * s  # scores and probabilities: s^2 per head
    final_norm = tokens * h * cb  # the last RMSNorm keeps its input, outside every layer
    if inp.activation_offload:
        activations = tokens * per_layer + final_norm
    elif inp.gradient_checkpointing:
        activations = tokens * (a.layers * h * cb + per_layer) + final_norm
    else:
        activations = tokens * a.layers * per_layer + final_norm

    if inp.loss == "rigtune" and inp.kernels == "liger":
        logits = liger_loss_bytes(a, tokens, cb)
    elif inp.loss == "rigtune" and inp.loss_chunk:  # one chunk's logits at a time, at trained positions only
        logits = min(tokens, inp.loss_chunk) * a.vocab * (LOSS_BYTES["rigtune"] + (cb if cb < 4 else 0))
    else:
        logits = tokens * a.vocab * (LOSS_BYTES[inp.loss] + (0 if inp.upcast or cb == 4 else cb))
    widest = max(x * y for x, y in a.linears().values()) * cb if inp.quantization != "none" else 0
    allocated = weights + adapters + gradients + optimizer + activations + logits + widest
    overhead = CUDA_CONTEXT_GIB * GIB + widest + FRAGMENTATION * allocated
    terms = {"weights": weights, "adapters": adapters, "gradients": gradients, "optimizer": optimizer,
             "activations": activations, "logits": logits, "overhead": overhead}
    return {k: v / GIB for k, v in terms.items()}


def adapters_sharded(inp: PlanInput) -> bool:
    """What engine.torchside.fsdp.shards_adapters decides for the run."""
    return inp.strategy == "fsdp" and inp.shard_adapters and inp.optimizer == "adamw_torch"


def liger_loss_bytes(a: Arch, tokens: int, cb: int) -> float:
    """Liger's fused linear cross-entropy: the logits of one chunk of ceil(tokens / ceil(vocab / hidden)) tokens
    (rounded up to a power of two) in fp32, with their gradient, plus the input gradient it computes in forward."""
    import math
    chunk = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(a.vocab / a.hidden))))))
    return 2 * min(chunk, tokens) * a.vocab * 4 + tokens * a.hidden * cb


def peak(inp: PlanInput) -> float:
    return sum(breakdown(inp).values())


def processes(inp: PlanInput) -> int:
    """Training processes of the run: one per card under DDP and FSDP, else one."""
    return len(inp.gpus) if inp.strategy in ("ddp", "fsdp") else 1


def ram_needed(inp: PlanInput) -> float:
    """Host RAM the run needs (GiB): a baseline per process, plus the offloaded weights."""
    procs = processes(inp)
    need = procs * PROCESS_RAM_GIB
    if inp.activation_offload:  # what the GPU no longer holds waits in RAM
        kept = breakdown(replace(inp, activation_offload=False))["activations"]
        need += procs * (kept - breakdown(inp)["activations"])
    if inp.cpu_offload:
        a = inp.arch
        need += (a.linear_params * linear_bytes(inp) + a.embed_params * DTYPE_BYTES[inp.compute_dtype]) / GIB
        need += adapter_params(inp) * 16 / GIB  # adapters, grads and optimizer state live there too
    return need


def keep_effective_batch(micro_batch: int, accum: int, new_micro_batch: int, processes: int = 1,
                         new_processes: int = 1) -> int:
    """The gradient accumulation that keeps the effective batch (micro-batch x accumulation x processes) when
    the micro-batch or the number of processes changes; at least 1. The one rule the planner's advice, the
    tiers' run values, the trainer's out-of-memory fallback and the wizard's fix all follow."""
    return max(1, micro_batch * accum * processes // max(1, new_micro_batch * new_processes))


def fits(inp: PlanInput, budget_gib: float | None = None) -> bool:
    budget = min(inp.gpus) if budget_gib is None else budget_gib
    if peak(inp) > budget:
        return False
    return inp.ram_gib is None or ram_needed(inp) <= inp.ram_gib


def _largest(inp: PlanInput, field: str, limit: int, budget_gib: float | None = None) -> int:
    """The largest value of `field` (at least 1) at which the run fits, by bisection; 0 if none does."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(replace(inp, **{field: mid}), budget_gib):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_seq_len(inp: PlanInput, limit: int = 1 << 20) -> int:
    """The longest sequence that fits at this micro-batch (0 if none does)."""
    return _largest(inp, "seq_len", limit)


def max_micro_batch(inp: PlanInput, limit: int = 4096) -> int:
    return _largest(inp, "micro_batch", limit)


# ---------------------------------------------------------------------------- strategy and advice

def _strategy_candidates(inp: PlanInput) -> list:
    if len(inp.gpus) <= 1:
        return [replace(inp, strategy="single", cpu_offload=False)]
    return [replace(inp, strategy="ddp", cpu_offload=False), replace(inp, strategy="fsdp", cpu_offload=False),
            replace(inp, strategy="fsdp", cpu_offload=True)]


def choose_strategy(inp: PlanInput) -> tuple[PlanInput, str]:
    """The fastest strategy that fits, and one line that says why (per card versus in total)."""
    cards = len(inp.gpus)
    card = min(inp.gpus)
    whole = peak(replace(inp, strategy="single" if cards == 1 else "ddp", cpu_offload=False))
    for cand in _strategy_candidates(inp):
        if not fits(cand):
            continue
        if cand.strategy == "single":
            return cand, f"single: the run needs {whole:.1f} GiB and the card has {card:.1f} GiB."
        if cand.strategy == "ddp":
            return cand, (f"ddp: each card holds the whole model, {whole:.1f} GiB per card of {card:.1f} GiB; "
                          f"{cards} cards train {cards}x the batch in parallel.")
        need = peak(cand)
        if not cand.cpu_offload:
            return cand, (f"fsdp: one card would need {whole:.1f} GiB but has {card:.1f} GiB; sharded over {cards} "
                          f"cards ({cards * card:.0f} GiB in total) each needs {need:.1f} GiB.")
        return cand, (f"fsdp + CPU offload: one card would need {whole:.1f} GiB, sharded "
                      f"{peak(replace(cand, cpu_offload=False)):.1f} GiB per card, more than its {card:.1f} GiB; "
                      f"with weights in CPU RAM ({ram_needed(cand):.0f} GiB) each card needs {need:.1f} GiB.")
    if cards == 1:
        return inp, f"does not fit: the run needs {whole:.1f} GiB and the card has {card:.1f} GiB."
    # nothing fits as set: the closest strategy the RAM allows, so that the suggestion starts from there
    usable = [c for c in _strategy_candidates(inp) if c.ram_gib is None or ram_needed(c) <= c.ram_gib]
    if not usable:
        return inp, (f"no strategy fits: one card would need {whole:.1f} GiB, and {cards} cards of {card:.1f} GiB "
                     "are not enough even sharded; CPU offload would need more RAM than this machine has.")
    best = min(usable, key=peak)
    name = "fsdp + CPU offload" if best.cpu_offload else best.strategy
    return best, (f"no strategy fits as set: one card would need {whole:.1f} GiB; the closest is {name} at "
                  f"{peak(best):.1f} GiB per card of {card:.1f} GiB (see the suggestion).")


@dataclass(frozen=True)
class StrategyRow:
    label: str          # single | ddp | fsdp | fsdp+offload
    strategy: str
    cpu_offload: bool
    peak_gib: float     # per card
    fits: bool
    chosen: bool        # the planner's pick (choose_strategy), when it fits


def strategy_table(inp: PlanInput) -> tuple[list, str]:
    """Every strategy the cards allow, each planned at the run's other settings, the pick marked; and the
    one-line reason for the pick."""
    best, why = choose_strategy(inp)
    best_fits = fits(best)
    rows = []
    for label, strategy, off in (("single", "single", False), ("ddp", "ddp", False), ("fsdp", "fsdp", False),
                                 ("fsdp+offload", "fsdp", True)):
        if strategy != "single" and len(inp.gpus) < 2:
            continue
        cand = replace(inp, strategy=strategy, cpu_offload=off)
        rows.append(StrategyRow(label, strategy, off, peak(cand), fits(cand),
                                best_fits and (best.strategy, best.cpu_offload) == (strategy, off)))
    return rows, why


# The run-file key of each PlanInput field that advice may change.
RUN_KEYS = {"micro_batch": "train.micro_batch_size", "accum": "train.gradient_accumulation_steps",
            "gradient_checkpointing": "train.gradient_checkpointing", "attn": "model.attn_implementation",
            "optimizer": "train.optimizer", "loss_chunk": "train.loss_chunk_tokens",
            "activation_offload": "train.activation_offload", "strategy": "hardware.strategy",
            "cpu_offload": "hardware.cpu_offload", "seq_len": "data.max_seq_len"}
SHORTEST_SEQ = 128  # below this, shortening sequences is no advice


def _candidates(inp: PlanInput):
    """Every combination of the changes advice may make, each keeping the effective batch. Only settings the
    engine accepts for the strategy: 8-bit AdamW (never paged, which FSDP refuses), CPU offload only with FSDP."""
    from itertools import product
    mbs, b = [inp.micro_batch], inp.micro_batch
    while b > 1:
        b //= 2
        mbs.append(b)
    layouts = [(inp.strategy, inp.cpu_offload)]
    if len(inp.gpus) > 1 and inp.strategy in ("ddp", "fsdp"):
        layouts += [x for x in (("fsdp", False), ("fsdp", True)) if x not in layouts]
    options = product([inp.gradient_checkpointing] + ([True] if not inp.gradient_checkpointing else []),
                      [inp.attn] + (["sdpa"] if inp.attn == "eager" else []),
                      [inp.optimizer] + (["adamw_8bit"] if inp.optimizer == "adamw_torch" else []),
                      [inp.loss_chunk] + ([c for c in (4096, 1024) if not inp.loss_chunk or c < inp.loss_chunk]
                                          if inp.loss == "rigtune" and inp.kernels != "liger" else []),
                      [inp.activation_offload] + ([True] if not inp.activation_offload else []),
                      mbs, layouts)
    for gc, attn, opt, chunk, act, mb, (strategy, offload) in options:
        if strategy == "fsdp" and opt == "paged_adamw_8bit":
            opt = "adamw_8bit"  # the same 8-bit state; FSDP cannot save paged optimizer state
        yield replace(inp, gradient_checkpointing=gc, attn=attn, optimizer=opt, loss_chunk=chunk,
                      activation_offload=act, micro_batch=mb, strategy=strategy, cpu_offload=offload,
                      accum=keep_effective_batch(inp.micro_batch, inp.accum, mb))


def _seconds_per_token(inp: PlanInput, card: Card) -> float:
    return 1.0 / tokens_per_s(inp, card)


def _step_words(field: str, old, new, inp: PlanInput, cand: PlanInput) -> str:
    if field == "micro_batch":
        return f"micro-batch {new} with gradient accumulation {cand.accum} (the same effective batch)"
    if field == "gradient_checkpointing":
        return "gradient checkpointing on (recomputes activations in backward: ~1.5x the matmul work)"
    if field == "attn":
        return "SDPA attention (no s^2 attention scores kept)"
    if field == "optimizer":
        return "8-bit AdamW (a quarter of the optimizer state)"
    if field == "loss_chunk":
        return f"chunked loss, {new} tokens at a time (the full logits are never held)"
    if field == "activation_offload":
        return "activations saved for backward wait in CPU RAM (slower steps)"
    if field == "cpu_offload":
        return f"FSDP with CPU offload (needs {ram_needed(cand):.0f} GiB of RAM)"
    if field == "strategy":
        return "shard the model over the cards with FSDP"
    if field == "seq_len":
        return f"shorten sequences to {new} tokens (longer examples are cut)"
    return f"{field} {old} -> {new}"


def suggest(inp: PlanInput, budget_gib: float | None = None) -> dict | None:
    """The complete set of changes that makes a run fit (in `budget_gib` per card, default the card), or None
    when it fits already or nothing does. Of all the combinations of changes that fit, the one with the
    shortest estimated training time for the same data (fewest changes on a tie); shortening sequences
    changes the data, so it comes only when nothing else fits. Verified: the result is planned again.
      {"change": {PlanInput field: value}, "keys": {run-file key: value}, "steps": [words per change],
       "peak_gib": planned peak after the change, "slowdown": estimated time / time as set}"""
    if fits(inp, budget_gib):
        return None
    card = card_named(inp.card) or load_cards()[DEFAULT_CARD]
    best = None
    for cand in _candidates(inp):
        if fits(cand, budget_gib):
            changed = sum(getattr(cand, f) != getattr(inp, f) for f in RUN_KEYS)
            key = (round(_seconds_per_token(cand, card), 12), changed)
            if best is None or key < best[0]:
                best = (key, cand)
    if best is None:  # nothing fits as the data is: the combination that allows the longest sequences
        for cand in _candidates(inp):
            longest = _largest(cand, "seq_len", inp.seq_len - 1, budget_gib)
            if longest >= SHORTEST_SEQ:
                cand = replace(cand, seq_len=longest)
                key = (-longest, round(_seconds_per_token(cand, card), 12))
                if best is None or key < best[0]:
                    best = (key, cand)
    if best is None:
        return None
    cand = best[1]
    assert fits(cand, budget_gib)  # planned again: advice that does not fit is a bug, not a suggestion
    change = {f: getattr(cand, f) for f in RUN_KEYS if getattr(cand, f) != getattr(inp, f)}
    steps = [_step_words(f, getattr(inp, f), v, inp, cand) for f, v in change.items() if f != "accum"]
    return {"change": change, "keys": {RUN_KEYS[f]: v for f, v in change.items()}, "steps": steps,
            "peak_gib": round(peak(cand), 2),
            "slowdown": round(_seconds_per_token(cand, card) / _seconds_per_token(inp, card), 2)}


# ---------------------------------------------------------------------------- time

# Effective GB/s between two cards (round numbers: RTX 3090 NVLink ~56 GB/s one way, PCIe 4.0 x16 peer-to-peer
# ~20, staged through host RAM ~10; GeForce drivers usually disable PCIe P2P), and host <-> card over PCIe 4.0
# x16 for CPU offload (~20 of its 32 GB/s in practice).
LINK_GBPS = {"nvlink": 50.0, "p2p": 20.0, "host": 10.0}
PCIE_GBPS = 20.0
# The share of a card's dense bf16 peak that QLoRA's matmuls reach, by class of card. Calibrated on one
# published or measured point each, and checked on points kept apart (bench/planner_accuracy/throughput.py):
#   consumer    torchtune's Llama-3.1-8B QLoRA on one RTX 4090 (2,413 tokens/s)
#   datacenter  rigtune's own engine, Llama-3.1-8B shape on an H200 (6,814 tokens/s; gpu_points.json)
# Large cards reach a smaller share: micro-batches of a few thousand tokens do not fill 132 SMs the way they
# fill a GeForce die, and bitsandbytes' dequantize runs between every matmul.
ACHIEVED = {"consumer": 0.71, "datacenter": 0.32}
# Bytes of memory traffic per 4-bit parameter per pass to dequantize it for the matmul: read 0.5 B of NF4,
# write 2 B of bf16, the matmul reads those 2 B again (derived, not fitted).
DEQUANT_BYTES = 4.5
DEFAULT_CARD = "RTX 3090"  # what link_cost compares against when no card is named


@dataclass(frozen=True)
class Card:
    name: str
    vram_gib: float
    bf16_tflops: float
    mem_gbps: float
    kind: str
    aliases: tuple = ()

    @property
    def achieved_tflops(self) -> float:
        return self.bf16_tflops * ACHIEVED[self.kind]


def _norm(text: str) -> str:
    return "".join(text.lower().replace("nvidia", "").replace("geforce", "").split()).replace("-", "")


@functools.lru_cache(maxsize=1)
def load_cards() -> dict:
    """presets/cards.toml as Cards, read once (every plan, suggestion and link cost looks cards up)."""
    return {name: Card(name, c["vram_gib"], c["bf16_tflops"], c["mem_gbps"], c["class"], tuple(c.get("aliases", ())))
            for name, c in presets.load_cards().items()}


def card_named(text: str) -> Card | None:
    """A card from its name, an alias or a device name as NVML reports it ("NVIDIA GeForce RTX 4090")."""
    want = _norm(text)
    if not want:
        return None
    cards = load_cards()
    for card in cards.values():
        if want in {_norm(card.name), *(_norm(a) for a in card.aliases)}:
            return card
    # a device name: the longest card name inside it ("rtx4090d" is not a 4090, "rtx3090ti" matches its alias)
    hits = [c for c in cards.values() if _norm(c.name) in want]
    return max(hits, key=lambda c: len(c.name)) if hits else None


def _aliases() -> set:
    return {_norm(a) for c in load_cards().values() for a in (c.name, *c.aliases)}


def card_of_size(gib: float) -> Card | None:
    """The card of this memory size when only one in the table has it (12 -> RTX 4070 Ti; 24 is ambiguous)."""
    hits = [c for c in load_cards().values() if abs(c.vram_gib - gib) < 0.5]
    return hits[0] if len(hits) == 1 else None


def flops_per_token(inp: PlanInput) -> float:
    """Matmul FLOPs per trained token of one optimizer micro-step. The frozen 4-bit base needs no weight
    gradient, so its backward is one matmul per layer (input gradient), not two: forward 2N + backward 2N,
    + 2N recomputed with gradient checkpointing. Adapters get both gradients. Attention scores: a token
    attends to s/2 positions on average (causal). The lm_head runs forward and backward once."""
    a = inp.arch
    passes = 3 if inp.gradient_checkpointing else 2
    base = 2 * (a.linear_params + a.active_expert_params) * passes
    adapters = 2 * adapter_params(inp) * (passes + 1)
    attention = 2 * 2 * (inp.seq_len / 2) * a.q_dim * a.layers * passes
    head = 2 * 2 * a.vocab * a.hidden
    return base + adapters + attention + head


def micro_batch_seconds(inp: PlanInput, card: Card) -> dict:
    """Seconds per micro-batch on one card, by part: compute, dequantize, link (card to card), offload."""
    a = inp.arch
    tokens = inp.seq_len * inp.micro_batch
    passes = 3 if inp.gradient_checkpointing else 2
    parts = {"compute": tokens * flops_per_token(inp) / (card.achieved_tflops * 1e12), "dequantize": 0.0,
             "link": link_seconds(inp), "offload": 0.0}
    if inp.quantization in ("nf4", "fp4"):
        parts["dequantize"] = passes * a.linear_params * DEQUANT_BYTES / (card.mem_gbps * 1e9)
    if inp.cpu_offload:  # the sharded weights come over PCIe for each forward, recompute and backward
        parts["offload"] += passes * a.linear_params * linear_bytes(inp) / len(inp.gpus) / (PCIE_GBPS * 1e9)
    if inp.activation_offload:  # saved activations go to RAM and come back
        saved = breakdown(replace(inp, activation_offload=False))["activations"] * GIB
        parts["offload"] += 2 * saved / (PCIE_GBPS * 1e9)
    return parts


def tokens_per_s(inp: PlanInput, card: Card) -> float:
    """Tokens per second of the whole run (every card's micro-batches)."""
    return processes(inp) * inp.seq_len * inp.micro_batch / sum(micro_batch_seconds(inp, card).values())


def link_seconds(inp: PlanInput, link: str | None = None) -> float:
    """Card-to-card transfer per micro-batch, assuming no overlap with compute (an upper bound). FSDP gathers
    the sharded base in forward and again in backward; DDP and rigtune's FSDP also average the adapter
    gradients."""
    n = len(inp.gpus)
    if n < 2 or inp.strategy == "single":
        return 0.0
    a = inp.arch
    cb = DTYPE_BYTES[inp.compute_dtype]
    moved = 2 * adapter_params(inp) * DTYPE_BYTES[inp.lora_dtype] * (n - 1) / n
    if inp.strategy == "fsdp":
        moved += 2 * (a.linear_params * linear_bytes(inp) + (a.embed_params + a.expert_params) * cb) * (n - 1) / n
    return moved / (LINK_GBPS[link or inp.link] * 1e9)


def link_cost(inp: PlanInput, link: str | None = None) -> tuple[float, float]:
    """(step time over `link` / step time over NVLink, seconds of card-to-card transfer per micro-batch)."""
    link = link or inp.link
    if len(inp.gpus) < 2 or inp.strategy == "single":
        return 1.0, 0.0
    card = card_named(inp.card) or load_cards()[DEFAULT_CARD]
    rest = sum(v for k, v in micro_batch_seconds(replace(inp, link="nvlink"), card).items() if k != "link")
    seconds = link_seconds(inp, link)
    return (rest + seconds) / (rest + link_seconds(inp, "nvlink")), seconds


def fmt_estimate(seconds: float) -> str:
    """'about 1 h 40 min', 'about 12 min', 'about 3.2 days', 'under a minute' - rounded as an estimate should be."""
    minutes = seconds / 60
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"about {minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        h, m = int(hours), int(round(minutes - int(hours) * 60, -1))
        if m == 60:
            h, m = h + 1, 0
        return f"about {h} h" + (f" {m} min" if m else "")
    return f"about {hours / 24:.1f} days"


def link_note(inp: PlanInput) -> str | None:
    """A warning for cards without NVLink, with the estimated slowdown."""
    if inp.link == "nvlink" or len(inp.gpus) < 2 or inp.strategy == "single":
        return None
    slow, seconds = link_cost(inp)
    what = "FSDP's weight gathers go" if inp.strategy == "fsdp" else "DDP's gradient averaging goes"
    how = "PCIe peer-to-peer" if inp.link == "p2p" else "PCIe through system RAM (no P2P)"
    return (f"no NVLink between the cards: {what} over {how}, about {seconds:.2f} s per micro-batch; "
            f"estimated {slow:.2f}x the step time with NVLink.")


def plan(inp: PlanInput, pick_strategy: bool = False, total_tokens: int | None = None) -> Plan:
    """The plan of a run: per-card memory by term, whether it fits, the longest sequence and largest
    micro-batch that do, the advice that makes it fit, and - on a named card - tokens/s and, given the
    run's total tokens, how long it takes."""
    notes = []
    if pick_strategy:
        inp, why = choose_strategy(inp)
        notes.append(why)
    if len(inp.gpus) > 1 and inp.strategy == "single":
        notes.append("strategy single uses one card; ddp or fsdp would use all of them.")
    link = link_note(inp)
    if link:
        notes.append(link)
    if inp.arch.experts:
        notes.append(f"{inp.arch.name} is a mixture of experts: all {inp.arch.experts} experts per layer stay in "
                     f"memory, in {inp.compute_dtype} (this stack quantizes only its attention layers to 4-bit; "
                     f"{inp.arch.expert_params * DTYPE_BYTES[inp.compute_dtype] / GIB:.1f} GiB of experts), and each "
                     f"token runs through {inp.arch.experts_active}; LoRA trains the attention layers.")
    if inp.strategy == "fsdp":
        notes.append("FSDP plans are the least certain: against published FSDP-QLoRA peaks this model ranges from "
                     "41% under to 18% over (bench/planner_accuracy); [train] oom_fallback = true halves the "
                     "micro-batch if it runs out.")
    terms = breakdown(inp)
    total = sum(terms.values())
    card = min(inp.gpus)
    ok = fits(inp)
    ram = ram_needed(inp)
    if inp.ram_gib is not None and ram > inp.ram_gib:
        notes.append(f"needs {ram:.0f} GiB of system RAM, {inp.ram_gib:.0f} GiB present.")
    if not ok and total > card and not pick_strategy:
        notes.append(f"needs {total:.1f} GiB per GPU, the card has {card:.1f} GiB.")
    advice = suggest(inp)
    if advice:
        notes.append("to fit, change all of: " + "; ".join(advice["steps"]) + f" (planned {advice['peak_gib']:.1f} "
                     f"GiB, about {advice['slowdown']:.2g}x the time).")
    named = card_named(inp.card)
    speed = duration = None
    if named is not None:
        timed = replace(inp, **advice["change"]) if advice else inp
        speed = tokens_per_s(timed, named)
        if total_tokens:
            duration = total_tokens / speed
            notes.append(f"time: {fmt_estimate(duration)} on {len(inp.gpus)} x {named.name} "
                         f"(~{speed:,.0f} tokens/s{' after the changes above' if advice else ''}).")
    return Plan(per_gpu_peak_gib=round(total, 2), breakdown_gib={k: round(v, 3) for k, v in terms.items()},
                fits=ok, max_seq_len=max_seq_len(inp), max_micro_batch=max_micro_batch(inp),
                strategy=inp.strategy, cpu_offload=inp.cpu_offload, notes=notes,
                suggestion=advice["keys"] if advice else None, suggestion_steps=advice["steps"] if advice else [],
                ram_needed_gib=round(ram, 1), gpu_gib=card, card=named.name if named else "",
                tokens_per_s_estimate=round(speed) if speed else None,
                duration_s_estimate=round(duration) if duration else None,
                arch=inp.arch.model_type, params_b=float(f"{inp.arch.total_params / 1e9:.5g}"),
                active_params_b=float(f"{inp.arch.active_params / 1e9:.5g}"),
                download_gib=float(f"{inp.arch.download_gib:.4g}"))


def parse_gpus(spec: str) -> tuple[list, str]:
    """(GiB of each card, card name or ""): '2x24' -> [24.0, 24.0]; '2x4090' -> two RTX 4090s; '24' -> [24.0];
    '24,12' -> [24.0, 12.0]; '1xA100-80'. A bare size names a card only when one card has that size."""
    def one(text: str):
        named = card_named(text)  # a name, or a number that is a card's alias ("4090"), before a size ("24")
        if named is not None and (not text.replace(".", "").isdigit() or _norm(text) in _aliases()):
            return named.vram_gib, named.name
        try:
            gib = float(text)
        except ValueError:
            raise BadInput(f"--gpus {spec!r}: {text!r} is neither a size in GiB nor a card rigtune knows "
                           f"({', '.join(load_cards())}).", key="--gpus") from None
        known = card_of_size(gib)
        return gib, known.name if known else ""
    try:
        if "x" in spec.lower() and spec.lower().split("x", 1)[0].strip().isdigit():
            count, what = spec.lower().split("x", 1)
            gib, name = one(what.strip())
            return [gib] * int(count), name
        sizes = [one(x.strip()) for x in spec.split(",")]
    except ValueError:
        raise BadInput(f"--gpus {spec!r} is not NxGIB (2x24), NxCARD (2x4090), GIB (24) or a list (24,12).",
                       key="--gpus") from None
    names = {n for _, n in sizes}
    return [g for g, _ in sizes], names.pop() if len(names) == 1 else ""


def input_from_run(cfg, arch: Arch, gpus: list, ram_gib: float | None, link: str = "nvlink",
                   card: str = "") -> PlanInput:
    """Plan inputs from a run file's values."""
    kernels = "liger" if cfg.train.kernels == "liger" or (cfg.train.kernels == "auto" and cfg.hardware.gpus) else "none"
    return PlanInput(
        arch=arch, gpus=gpus, link=link, card=card, accum=cfg.train.gradient_accumulation_steps, kernels=kernels,
        shard_adapters=cfg.hardware.shard_adapters, seq_len=cfg.data.max_seq_len, micro_batch=cfg.train.micro_batch_size,
        lora_r=cfg.lora.r, lora_targets=cfg.lora.target_modules, lora_dropout=cfg.lora.dropout,
        optimizer=cfg.train.optimizer, gradient_checkpointing=cfg.train.gradient_checkpointing,
        attn=cfg.model.attn_implementation, quantization=cfg.model.quantization, double_quant=cfg.model.double_quant,
        compute_dtype=cfg.model.compute_dtype, strategy=cfg.hardware.strategy, cpu_offload=cfg.hardware.cpu_offload,
        ram_gib=ram_gib, loss_chunk=cfg.train.loss_chunk_tokens, activation_offload=cfg.train.activation_offload)


# ---------------------------------------------------------------------------- learning from past runs

def past_runs(runs_root: Path, arch_name: str) -> str | None:
    """How far off the planner was on this machine's earlier runs of the same model: each run directory's
    plan.json (written at launch) against the `memory` event its trainer wrote."""
    if not runs_root.is_dir():
        return None
    errors, unreadable = [], []
    for plan_file in runs_root.glob(f"*/{PLAN}"):
        try:
            planned = json.loads(plan_file.read_text())
            lines = (plan_file.parent / METRICS).read_text(errors="replace").splitlines()
        except (OSError, ValueError):  # a damaged or half-deleted run: named in the note, not counted
            unreadable.append(plan_file.parent.name)
            continue
        if planned.get("model") != arch_name or not planned.get("per_gpu_peak_gib"):
            continue
        measured = None
        for line in lines:
            if '"memory"' in line:
                try:
                    measured = json.loads(line).get("peak_gib") or measured
                except ValueError:  # a torn last line of a killed trainer: no memory event in it
                    continue
        if measured:
            errors.append((measured - planned["per_gpu_peak_gib"]) / planned["per_gpu_peak_gib"])
    skipped = f" Skipped unreadable run(s): {', '.join(sorted(unreadable))}." if unreadable else ""
    if not errors:
        return skipped.strip() or None
    mean = sum(errors) / len(errors)
    return (f"past runs of {arch_name} here: measured peaks were {mean:+.0%} against the plan on average "
            f"({len(errors)} run{'s' if len(errors) > 1 else ''}).{skipped}")
