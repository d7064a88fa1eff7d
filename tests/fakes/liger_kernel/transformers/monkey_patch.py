import types

import torch

APPLIED = []


def _rms_norm_forward(self, hidden):
    self.liger_calls = getattr(self, "liger_calls", 0) + 1
    dtype = hidden.dtype
    h = hidden.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * h.to(dtype)


def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True,
                                swiglu=True, model=None):
    if getattr(model, "fake_liger_fail", False):
        raise AttributeError("'LlamaMLP' object has no attribute 'act_fn' (fake version mismatch)")
    APPLIED.append({"rope": rope, "cross_entropy": cross_entropy, "rms_norm": rms_norm, "swiglu": swiglu,
                    "fused_linear_cross_entropy": fused_linear_cross_entropy})
    if rms_norm:
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm"):
                mod.forward = types.MethodType(_rms_norm_forward, mod)


MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": apply_liger_kernel_to_llama}


def _apply_liger_kernel_to_instance(model, **kwargs):
    MODEL_TYPE_TO_APPLY_LIGER_FN[model.config.model_type](model=model, **kwargs)
