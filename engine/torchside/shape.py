"""A model of a real shape with random weights, built from its config.json alone: what `rigtune probe` trains to
measure this machine, with no download. Weights don't change memory or speed; the shape, the dtypes and the
quantization do, and those are the ones a real load gives (tests/test_probe.py compares them module by module).

The skeleton is made without memory (accelerate's init_empty_weights; buffers such as the rotary frequencies are
computed as usual), bitsandbytes' quantizer swaps the linear layers exactly as from_pretrained does, and then
each weight is drawn on the device and, for a 4-bit layer, quantized there at once: the whole model never
exists in 16 bits. An MoE model's fused experts are drawn a layer at a time and packed to 4 bits at once, as
engine.torchside.experts does when a checkpoint loads."""
from __future__ import annotations

from pathlib import Path


def random_base(cfg, folder: Path, device, attn: str, qc):
    """The base model of `folder`'s config.json with random weights on `device`, built with attention `attn`
    and quantized by bitsandbytes config `qc` (or not, for None) - what engine.torchside.model.load_base passes,
    so that this gives the same modules, shapes and dtypes as its real load."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    trust = bool(cfg.model.trust_remote_code)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    if hasattr(config, "quantization_config"):  # a pre-quantized checkpoint's own format: rigtune quantizes itself
        del config.quantization_config
    dtype = getattr(torch, cfg.model.compute_dtype)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn,
                                                 trust_remote_code=trust)
    quantizer = None
    if qc is not None:
        from transformers.quantizers import AutoHfQuantizer
        quantizer = AutoHfQuantizer.from_config(qc, pre_quantized=False)
        quantizer.preprocess_model(model=model, dtype=dtype, device_map={"": device}, checkpoint_files=None)
    device = torch.device(device)
    std = getattr(config, "initializer_range", 0.02) or 0.02
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device.type == "meta":
                module._parameters[name] = _drawn(module, p, device, std, quantizer)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.device != device:
                module._buffers[name] = b.to(device)
    model.tie_weights()
    if quantizer is not None:
        model.hf_quantizer = quantizer
        quantizer.postprocess_model(model)
    model.eval()
    return model


def _drawn(module, p, device, std: float, quantizer=None):
    """A random weight of p's shape and dtype on `device` (norms start at one), quantized there if p is a
    4-bit parameter (or fused experts the quantizer packs)."""
    import torch
    if "norm" in type(module).__name__.lower():
        return torch.nn.Parameter(torch.ones(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad)
    try:
        import bitsandbytes as bnb
        four_bit = isinstance(p, bnb.nn.Params4bit)
    except ImportError:  # no bitsandbytes: nothing can be 4-bit
        four_bit = False
    if quantizer is not None and type(quantizer).__name__ == "ExpertsQuantizer":
        from .experts import DOUBLE_QUANT, EXPERT_WEIGHTS, is_experts, packed_parameter
        qc = quantizer.quantization_config
        if is_experts(module) and any(module._parameters.get(n) is p for n in EXPERT_WEIGHTS):
            data = torch.randn(p.shape, dtype=qc.bnb_4bit_compute_dtype, device=device) * std
            return packed_parameter(data, qc.bnb_4bit_quant_type, DOUBLE_QUANT)
    if four_bit:
        dtype = getattr(module, "compute_dtype", None) or torch.bfloat16
        data = torch.randn(p.shape, dtype=dtype, device=device) * std
        return bnb.nn.Params4bit(data, requires_grad=False, quant_type=p.quant_type, blocksize=p.blocksize,
                                 compress_statistics=p.compress_statistics, quant_storage=p.quant_storage,
                                 module=module).to(device)
    data = torch.randn(p.shape, dtype=p.dtype, device=device) * std if p.dtype.is_floating_point else \
        torch.zeros(p.shape, dtype=p.dtype, device=device)
    return torch.nn.Parameter(data, requires_grad=p.requires_grad)
