"""Fused GPU kernels from Liger (Triton): RMSNorm, RoPE and SwiGLU patched into the model, and the fused
linear cross-entropy for the loss. `[train] kernels`:

  auto   Liger when the run is on a CUDA GPU, liger-kernel is installed (`make install` adds it on a GPU box)
         and it supports the model type; otherwise plain PyTorch, with the reason in the start event.
  liger  the same, but a run that cannot have them stops before training, saying why.
  none   plain PyTorch.

Guards: the patch goes on the base model before peft-wrapped modules are sharded by
FSDP (FSDP2 swaps module classes); Liger's own loss patch stays off, because rigtune computes the loss
itself, only at trained positions, with Liger's fused linear cross-entropy in place of its chunked one.
"""
from __future__ import annotations

from ..errors import BadInput
from .head import final_softcap

PATCHES = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
           "fused_linear_cross_entropy": False}


def why_not(model, device) -> str | None:
    """None when Liger can run here, else the reason it cannot."""
    if device.type != "cuda":
        return "no CUDA GPU (Liger's kernels are Triton, GPU only)"
    try:
        from liger_kernel.transformers import monkey_patch
    except ImportError:
        return "liger-kernel is not installed (pip install liger-kernel)"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"Liger has no kernels for model type {model_type!r}"
    return None


def apply(setting: str, model, device) -> tuple[str, object | None]:
    """Patch `model` (a transformers model, not yet wrapped by peft or FSDP) for `setting`. Returns what
    runs ("liger", or "none: <reason>") and Liger's fused linear cross-entropy loss, or None."""
    if setting == "none":
        return "none", None
    reason = why_not(model, device)
    if reason is None:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
            from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
            _apply_liger_kernel_to_instance(model=model, **PATCHES)
            cap = final_softcap(model)  # Gemma 2 caps its logits; the fused loss must too
            return "liger", LigerFusedLinearCrossEntropyLoss(reduction="sum", **({"softcap": cap} if cap else {}))
        except Exception as e:  # a liger/transformers version mismatch: say so, train without
            reason = f"Liger failed to patch this model ({type(e).__name__}: {str(e)[:160]})"
    if setting == "liger":
        raise BadInput(f"kernels = \"liger\" cannot run here: {reason}. Use kernels = \"auto\" to fall back to "
                       "plain PyTorch, or \"none\".", key="train.kernels")
    return f"none: {reason}", None
