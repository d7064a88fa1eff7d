"""Load the base model (NF4 through bitsandbytes, or 16-bit) and attach LoRA with peft."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .head import detach_head, text_of


@dataclass
class Loaded:
    """A model ready to train: the PeftModel, and what rigtune keeps beside it rather than on it.
    head: the frozen lm_head held aside for the chunked loss (None when the model returns logits itself);
    kernels: which fused kernels run ("liger" or "none: <reason>"); fused_loss: Liger's fused linear
    cross-entropy, or None."""
    model: object
    head: object = None
    kernels: str = "none"
    fused_loss: object = None
    sharded_adapters: bool = False  # FSDP shards the adapters too (engine.torchside.fsdp)


def _hub_kwargs(m) -> dict:
    kw = {"trust_remote_code": bool(m.trust_remote_code)}
    if m.revision:
        kw["revision"] = m.revision
    return kw


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    from ..data import ensure_chat_template
    m = cfg.model
    try:
        tok = AutoTokenizer.from_pretrained(m.base, **_hub_kwargs(m))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer of '{m.base}' ({str(e).splitlines()[0][:200]}). Give a local "
                       "model folder or a Hugging Face id that is reachable.", key="model.base") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return ensure_chat_template(tok)


def load_model(cfg, device) -> Loaded:
    """The base model on `device` with LoRA adapters attached; only the adapters are trainable."""
    return add_lora(cfg, load_base(cfg, device), device)


def quantization_config(cfg, experts: bool = False, mxfp4: bool = False):
    """bitsandbytes settings for the run, or None. The 4-bit weights are stored in the compute dtype, the one
    dtype FSDP needs every shard of a layer to have (and harmless for one process). experts: an MoE model, whose
    fused expert weights are quantized as they load too (engine.torchside.experts); mxfp4: its checkpoint ships
    them in MXFP4 (gpt-oss), dequantized tensor by tensor on the way."""
    import torch
    from transformers import BitsAndBytesConfig
    m = cfg.model
    if m.quantization == "none":
        return None
    dtype = getattr(torch, m.compute_dtype)
    settings = dict(load_in_4bit=True, bnb_4bit_quant_type=m.quantization, bnb_4bit_use_double_quant=m.double_quant,
                    bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)
    if experts or mxfp4:
        from .experts import ExpertsConfig
        return ExpertsConfig(mxfp4=mxfp4, **settings)
    return BitsAndBytesConfig(**settings)


def is_mxfp4(config) -> bool:
    """The checkpoint's weights ship in MXFP4 (gpt-oss's experts)."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    return str(method) == "mxfp4"


def attn_implementation(cfg) -> str:
    """The attention the model is built with: packed rows on SDPA get one SDPA call per example
    (engine.attention), unless the model's attention is more than plain causal SDPA - then transformers' own
    implementation, which isolates packed examples by the restarting position ids all the same:
      logit softcapping (Gemma 2): SDPA cannot apply it, eager does;
      sliding windows shorter than the sequences (Gemma 2/3, Mistral with a window): transformers' SDPA masks them.
    Attention sinks (gpt-oss, which transformers offers no SDPA for) take rigtune's packed attention, which adds
    them and the sliding windows (engine.torchside.attention).
    Linear-attention layers (Qwen3.5/3.6) learn where each packed example starts only from rigtune's packed
    attention (engine.torchside.linear_attention): with packing they take it whether the run file says sdpa or
    eager (the same causal attention per example); flash_attention_2 passes the starts itself.
    Everything else is the run file's choice as transformers implements it."""
    impl = cfg.model.attn_implementation
    if not cfg.data.packing or impl not in ("sdpa", "eager"):
        return impl
    text = text_config(cfg)
    from . import attention
    if "linear_attention" in (getattr(text, "layer_types", None) or ()):
        return attention.register()
    if impl != "sdpa":
        return impl
    if getattr(text, "attn_logit_softcapping", None):
        return "eager"
    if text.model_type in attention.SINKS:
        return attention.register()
    window = getattr(text, "sliding_window", None)
    if window and window < cfg.data.max_seq_len and getattr(text, "use_sliding_window", True) is not False:
        return "sdpa"
    return attention.register()


def text_config(cfg):
    """The model's (text) config, read from its config.json without loading weights."""
    from transformers import AutoConfig
    return text_of(AutoConfig.from_pretrained(cfg.model.base, **_hub_kwargs(cfg.model)))


def load_base(cfg, device):
    """The (quantized) base model on `device`, without adapters. An MoE model's experts are 4-bit too when the
    run quantizes (engine.torchside.experts); an MXFP4 checkpoint's experts are dequantized as they load, and
    quantized to the run's 4-bit type at once (or kept in the compute dtype with quantization = "none")."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Mxfp4Config

    from ..modelref import SHAPE_MARK
    from . import linear_attention
    from .shape import random_base
    m = cfg.model
    shape_only = (Path(m.base) / SHAPE_MARK).exists()  # a model's shape alone (engine.probe): random weights of it
    try:
        config = AutoConfig.from_pretrained(m.base, **({} if shape_only else _hub_kwargs(m)))
        mxfp4 = is_mxfp4(config)
        qc = quantization_config(cfg, experts=bool(experts_of(text_of(config))), mxfp4=mxfp4)
        kwargs = dict(_hub_kwargs(m), dtype=getattr(torch, m.compute_dtype), attn_implementation=attn_implementation(cfg),
                      device_map={"": device}, low_cpu_mem_usage=True, quantization_config=qc)
        if shape_only:
            model = random_base(cfg, Path(m.base), device, kwargs["attn_implementation"], qc)
        elif mxfp4 and qc is None:
            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)  # transformers' own route to 16 bits
            model = AutoModelForCausalLM.from_pretrained(m.base, **kwargs)
        else:
            if mxfp4:  # rigtune's quantizer reads the MXFP4 tensors itself (ExpertsConfig.mxfp4)
                del config.quantization_config
                kwargs["config"] = config
            model = AutoModelForCausalLM.from_pretrained(m.base, **kwargs)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load model '{m.base}' ({str(e).splitlines()[0][:300]}).", key="model.base") from None
    keep_cpu_weights_as_loaded(model)
    linear_attention.isolate(model)  # packed examples through Qwen3.5's linear-attention layers one at a time
    return model


def experts_of(config) -> int:
    """Experts per MoE layer of a (text) config, 0 for a dense model."""
    return int(getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None) or 0)


def keep_cpu_weights_as_loaded(model) -> None:
    """bitsandbytes repacks a 4-bit weight in place for a faster bf16 CPU kernel the first time it runs in
    eval mode on a CPU with AVX512-BF16. Training continues on the repacked weights in lower precision, so one
    mid-run eval would change the losses (and, in DDP, only rank 0's). Keep the weights as loaded."""
    for mod in model.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False


def add_lora(cfg, model, device) -> Loaded:
    """Fused kernels ([train] kernels), gradient checkpointing and LoRA adapters on a loaded base (on `device`
    for training); only the adapters are trainable."""
    import torch
    from peft import LoraConfig, get_peft_model

    from . import kernels
    running, fused_loss = kernels.apply(cfg.train.kernels, model, torch.device(device))
    lora = cfg.lora
    model.config.use_cache = False
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    targets = lora.target_modules
    if targets == "all-linear" and is_moe(model):
        targets = linear_names(model)
    # a multimodal model (Gemma 3) trains its language model: text batches never reach the vision tower, whose
    # adapters would stay zero and only cost memory
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                             target_modules=targets, task_type="CAUSAL_LM",
                             exclude_modules=VISION_MODULES if hasattr(model.config, "vision_config") else None)
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as e:
        raise BadInput(f"LoRA target_modules {targets!r} do not match this model ({str(e)[:200]}); use "
                       "\"all-linear\" or names such as [\"q_proj\", \"v_proj\"].", key="lora.target_modules") from None
    head = detach_head(model) if cfg.train.loss_chunk_tokens else None
    return Loaded(model=model, head=head, kernels=running, fused_loss=fused_loss)


def is_moe(model) -> bool:
    return bool(experts_of(text_of(model.config)))


def linear_names(model) -> list:
    """The names of the decoder's nn.Linear layers (4-bit ones included), without the lm_head and the vision
    tower. For an MoE model these are the attention projections: peft's "all-linear" would also put LoRA on
    the fused 3-D experts and the router (target_parameters), which needs lora_dropout = 0 and is not what
    rigtune plans; the experts stay frozen."""
    import re

    import torch
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.Linear) and "lm_head" not in name and not re.match(VISION_MODULES, name)})


# the vision tower and its projector into the text model (Gemma 4 calls it embed_vision)
VISION_MODULES = r".*\b(vision_tower|vision_model|multi_modal_projector|embed_vision)\b.*"
