"""Load the base model (NF4 through bitsandbytes, or 16-bit) and attach LoRA with peft."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput


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


def quantization_config(cfg):
    """bitsandbytes settings for the run, or None. The 4-bit weights are stored in the compute dtype, the one
    dtype FSDP needs every shard of a layer to have (and harmless for one process)."""
    import torch
    from transformers import BitsAndBytesConfig
    m = cfg.model
    if m.quantization == "none":
        return None
    dtype = getattr(torch, m.compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=m.quantization,
                              bnb_4bit_use_double_quant=m.double_quant, bnb_4bit_compute_dtype=dtype,
                              bnb_4bit_quant_storage=dtype)


def attn_implementation(cfg) -> str:
    """The attention the model is built with: packed rows on SDPA get one SDPA call per example
    (engine.attention); everything else is the run file's choice as transformers implements it."""
    impl = cfg.model.attn_implementation
    if impl == "sdpa" and cfg.data.packing:
        from . import attention
        return attention.register()
    return impl


def load_base(cfg, device):
    """The (quantized) base model on `device`, without adapters."""
    import torch
    from transformers import AutoModelForCausalLM

    m = cfg.model
    kwargs = dict(_hub_kwargs(m), dtype=getattr(torch, m.compute_dtype),
                  attn_implementation=attn_implementation(cfg), device_map={"": device}, low_cpu_mem_usage=True,
                  quantization_config=quantization_config(cfg))
    try:
        model = AutoModelForCausalLM.from_pretrained(m.base, **kwargs)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load model '{m.base}' ({str(e).splitlines()[0][:300]}).", key="model.base") from None
    keep_cpu_weights_as_loaded(model)
    return model


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
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                             target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as e:
        raise BadInput(f"LoRA target_modules {targets!r} do not match this model ({str(e)[:200]}); use "
                       "\"all-linear\" or names such as [\"q_proj\", \"v_proj\"].", key="lora.target_modules") from None
    head = detach_head(model) if cfg.train.loss_chunk_tokens else None
    return Loaded(model=model, head=head, kernels=running, fused_loss=fused_loss)


def detach_head(model):
    """Make the forward pass return the final hidden states: the (frozen) lm_head is taken out and returned,
    for the chunked loss to apply only where a token is trained (it is then no registered submodule: no
    DDP bucket, nothing in the adapter file). `full_head(model, head)` puts it back, e.g. to generate."""
    import torch
    base = model.get_base_model()
    head = base.get_output_embeddings()
    if head is None or isinstance(head, torch.nn.Identity):
        return None
    base.set_output_embeddings(torch.nn.Identity())
    return head


class full_head:
    """Context manager: the model with its lm_head in place (generation needs logits)."""

    def __init__(self, model, head):
        self.model, self.head = model, head

    def __enter__(self):
        if self.head is not None:
            self.model.get_base_model().set_output_embeddings(self.head)
        return self.model

    def __exit__(self, *exc):
        if self.head is not None:
            import torch
            self.model.get_base_model().set_output_embeddings(torch.nn.Identity())
