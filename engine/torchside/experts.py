"""Mixture-of-experts weights in 4 bits, quantized as they load and dequantized one expert at a time.

transformers keeps an MoE block's experts as two fused 3-D parameters (`gate_up_proj`, `down_proj`: one slice
per expert), which bitsandbytes' load_in_4bit leaves in the compute dtype: 57 GB for Qwen3-30B-A3B. Here they
are 4-bit too (whenever [model] quantization is nf4 or fp4), with bitsandbytes' functional API:

Load. ExpertsQuantizer (a Bnb4BitHfQuantizer) also claims the experts' 3-D weights. transformers' loader asks it
per parameter as each one is materialized - after it has fused a checkpoint's per-expert tensors into the 3-D
layout, one layer at a time - and F.quantize_4bit packs it at once (blocks of 64, the run's quant type, single
quant: 4.5 bits a weight, what the planner counts). Not double quant, though the forward reads it: its nested
statistics and their offset span the whole fused tensor, so a per-expert checkpoint tensor could not be quantized
and dequantized alone to the weights training saw; with one fp32 absmax per 64 values each 64-aligned slice can,
which is how the merged export (engine.torchside.export, as_trained_expert) reproduces the trained experts tensor
by tensor. It costs 0.37 bits a weight (1.3 GiB on Qwen3-30B-A3B's 29 billion expert weights). The whole model
never exists in 16 bits: at most one layer's fused expert tensor does. gpt-oss ships its
experts in MXFP4 (`*_blocks`, `*_scales`): the same quantizer adds a converter that dequantizes each such tensor
as it loads (transformers' MXFP4 layout: two FP4 values per byte, low nibble first, one power-of-two scale biased
by 127 per 32 values, stored transposed) and hands it straight to the NF4 quantizer.

Forward. The packed data, its absmax and (double quant) the nested absmax and code become plain frozen
parameters of the experts module (`gate_up_proj_nf4`, `gate_up_proj_absmax`, ...): .to(), DDP's start-up
broadcast and state_dict see them like bitsandbytes' own Params4bit, and no module is named `down_proj` for
peft to mistake for a target. The module's class is swapped for a subclass whose `gate_up_proj` / `down_proj`
are views: `view[e]` dequantizes expert e alone. An expert is a contiguous range of the flat 4-bit data, so its
slice is a contiguous range of the packed bytes and of the absmax blocks (blocks that straddle two experts are
dequantized whole and trimmed; the nested absmax likewise, in blocks of 256). The subclass runs the family's
own eager forward (qwen3_moe, qwen3_5_moe, mixtral, gemma4, gpt_oss all index `self.gate_up_proj[expert_idx]`),
bypassing transformers' grouped_mm dispatch, which needs the whole 3-D tensor.

Backward. F.linear(x, W) saves W (or its transpose) for x's gradient. Inside the experts' forward a
saved-tensor hook replaces a dequantized expert weight by (which, expert, view geometry) and backward
dequantizes it again: backward holds no 16-bit expert weight beyond the one in use, with or without gradient
checkpointing. Every other tensor the experts save is handed on to the hooks around them (checkpointing's), so
that a checkpointed layer keeps none of its experts' activations until it is recomputed. The experts stay frozen (LoRA targets the linears, engine.torchside.model.linear_names).

Why not bitsandbytes.nn.parametrize.replace_parameter_4bit (bnb 0.50): it dequantizes the whole 3-D tensor on
each access (cached for the module's forward), so every forward makes a 16-bit copy of all of the layer's experts
(1.2 GB for Qwen3-30B-A3B's, 1.6 GB for gpt-oss-20b's) even when a few are routed to, and the per-expert slices
the forward saves keep that copy alive until backward - without gradient checkpointing, every layer's copy at
once, i.e. the 16-bit model the quantization was to avoid. Per-expert dequantization costs one small kernel per
routed expert and no more memory than one expert (bench/moe_experts measures the speed cost).
"""
from __future__ import annotations

import math
import weakref

import torch
from torch import nn
from transformers import BitsAndBytesConfig
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.integrations.bitsandbytes import Bnb4bitQuantize
from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name

METHOD = "rigtune_4bit_experts"
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj")
BLOCK = 64          # values per absmax block (what bitsandbytes' Linear4bit uses)
NESTED_BLOCK = 256  # absmax values per nested block (double quant)
DOUBLE_QUANT = False  # for the experts, whatever [model] double_quant says for the linears (see above)
# the expert tensors of a checkpoint: fused (transformers 5, gpt-oss; MXFP4 blocks) or one per expert (the hub's
# Qwen3-MoE and Mixtral layouts)
EXPERT_TENSOR = r".*\.experts\.((gate_up_proj|down_proj)(_blocks)?|\d+\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight)$"
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def is_experts(module) -> bool:
    """A transformers MoE experts module with fused 3-D expert weights (or ones packed here already)."""
    if not type(module).__name__.endswith("Experts"):
        return False
    params, done = getattr(module, "_parameters", {}), module.__dict__.get("_rigtune_4bit", {})
    return all(n in done or isinstance(params.get(n), torch.Tensor) and (params[n].dim() == 3 or hasattr(
        params[n], "rigtune_state")) for n in EXPERT_WEIGHTS)


def quantize(value, quant_type: str, double_quant: bool, chunk: int = 1 << 22):
    """(packed 4-bit data, bitsandbytes QuantState) of a fused expert tensor. Single quant goes `chunk` values
    at a time (its blocks are independent, so the result is the whole tensor's): bitsandbytes' CPU quantizer
    holds about 7 times its input in temporaries (bench/moe_experts), a whole layer's experts at once would be
    gigabytes. Double quant's nested statistics need the whole tensor."""
    from bitsandbytes import functional as F
    flat = value.contiguous().reshape(-1)
    if double_quant or flat.numel() <= chunk:
        packed, state = F.quantize_4bit(flat, blocksize=BLOCK, compress_statistics=double_quant,
                                        quant_type=quant_type, quant_storage=torch.uint8)
        state.shape = value.shape
        return packed, state
    n = flat.numel()
    packed = torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device=flat.device)
    absmax = torch.empty(-(-n // BLOCK), dtype=torch.float32, device=flat.device)
    for start in range(0, n, chunk):
        part, state = F.quantize_4bit(flat[start:start + chunk], blocksize=BLOCK, quant_type=quant_type,
                                      quant_storage=torch.uint8)
        packed[start // 2: start // 2 + part.shape[0]] = part
        absmax[start // BLOCK: start // BLOCK + state.absmax.numel()] = state.absmax
    return packed, F.QuantState(absmax=absmax, shape=value.shape, code=state.code, blocksize=BLOCK,
                                quant_type=quant_type, dtype=value.dtype)


def packed_parameter(value, quant_type: str, double_quant: bool) -> nn.Parameter:
    """A frozen parameter holding the 4-bit data, its quantization state riding along until adopt()."""
    packed, state = quantize(value, quant_type, double_quant)
    p = nn.Parameter(packed, requires_grad=False)
    p.rigtune_state = state
    return p


# ---- the forward: per-expert views, and a saved-tensor hook that keeps no dequantized weight for backward

class _Views:
    """module.gate_up_proj as the family's forward sees it: view[e] is expert e's weight in the compute dtype."""
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __getitem__(self, idx):
        return self.module._expert_weight(self.name, int(idx), remember=True)

    @property
    def shape(self):
        return torch.Size(self.module._rigtune_4bit[self.name]["shape"])

    def dequantize(self):
        """All experts, in the compute dtype (tests, exports)."""
        return torch.stack([self.module._expert_weight(self.name, e) for e in range(self.shape[0])])


_MARK = object()
_OUTER = object()


class FourBitExperts:
    """Mixed in front of a family's experts class (see adopt())."""

    def __getattr__(self, name):
        if name in self.__dict__.get("_rigtune_4bit", ()):
            return _Views(self, name)
        return super().__getattr__(name)

    def _expert_weight(self, name: str, e: int, remember: bool = False):
        meta = self._rigtune_4bit[name]
        _, rows, cols = meta["shape"]
        n = rows * cols
        first, last = e * n // BLOCK, -(-(e + 1) * n // BLOCK)
        absmax = self._absmax(name, meta, first, last)
        packed = self._parameters[f"{name}_nf4"]
        data = packed[first * BLOCK // 2: min(last * BLOCK // 2, packed.shape[0])]
        count = min(last * BLOCK, meta["numel"]) - first * BLOCK
        flat = torch.ops.bitsandbytes.dequantize_4bit.default(data, absmax, BLOCK, meta["quant_type"], (count,),
                                                              meta["dtype"]).reshape(-1)
        start = e * n - first * BLOCK
        w = flat[start:start + n].view(rows, cols)
        if remember:
            root = w._base if w._base is not None else w
            self._rigtune_made[id(root)] = (weakref.ref(root), name, e)
        return w

    def _absmax(self, name, meta, first, last):
        absmax = self._parameters[f"{name}_absmax"]
        if not meta["nested"]:
            return absmax[first:last]
        from bitsandbytes import functional as F
        lo, hi = first // NESTED_BLOCK, -(-last // NESTED_BLOCK)
        part = F.dequantize_blockwise(absmax[lo * NESTED_BLOCK: hi * NESTED_BLOCK],
                                      absmax=self._parameters[f"{name}_absmax2"][lo:hi],
                                      code=self._parameters[f"{name}_code2"], blocksize=NESTED_BLOCK)
        return (part[first - lo * NESTED_BLOCK: last - lo * NESTED_BLOCK] + meta["offset"]).float()

    def _pack(self, t):
        root = t._base if t._base is not None else t
        made = self._rigtune_made.get(id(root))
        if made is not None and made[0]() is root:
            return (_MARK, made[1], made[2], t.size(), t.stride(), t.storage_offset())
        return t

    def _unpack(self, saved):
        if isinstance(saved, tuple) and saved and saved[0] is _MARK:
            _, name, e, size, stride, offset = saved
            w = self._expert_weight(name, e)
            return (w._base if w._base is not None else w).as_strided(size, stride, offset)
        return saved

    def forward(self, *args, **kwargs):
        # torch applies only the innermost saved-tensor hooks: everything else the experts save goes on to the
        # hooks around them (gradient checkpointing's, which keep nothing until the layer is recomputed), or the
        # experts' activations would stay alive for every layer until backward
        outer = torch._C._autograd._top_saved_tensors_default_hooks(False)

        def pack(t):
            mine = self._pack(t)
            return mine if mine is not t or outer is None else (_OUTER, outer[0](t))

        def unpack(saved):
            if isinstance(saved, tuple) and saved and saved[0] is _OUTER:
                return outer[1](saved[1])
            return self._unpack(saved)

        self.__dict__["_rigtune_made"] = {}
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                return self._rigtune_eager(*args, **kwargs)
        finally:
            self.__dict__["_rigtune_made"] = {}


_CLASSES: dict = {}


def _four_bit_class(cls):
    if cls not in _CLASSES:
        eager = getattr(cls.forward, "__wrapped__", cls.forward)  # transformers' experts dispatch wraps the eager one
        _CLASSES[cls] = type(f"FourBit{cls.__name__}", (FourBitExperts, cls),
                             {"_rigtune_eager": lambda self, *a, **k: eager(self, *a, **k)})
    return _CLASSES[cls]


def adopt(model) -> int:
    """Turn every experts module whose weights were packed (packed_parameter) into its 4-bit form; returns how
    many tensors were adopted."""
    count = 0
    for module in model.modules():
        for name in EXPERT_WEIGHTS:
            p = module._parameters.get(name) if hasattr(module, "_parameters") else None
            state = getattr(p, "rigtune_state", None)
            if state is None:
                continue
            del module._parameters[name]
            keep = lambda suffix, t: module.register_parameter(f"{name}_{suffix}", nn.Parameter(t, requires_grad=False))
            keep("nf4", p.data.reshape(-1))
            keep("absmax", state.absmax)
            if state.nested:
                keep("absmax2", state.state2.absmax)
                keep("code2", state.state2.code)
            module.__dict__.setdefault("_rigtune_4bit", {})[name] = {
                "shape": tuple(state.shape), "numel": math.prod(state.shape), "quant_type": state.quant_type,
                "dtype": state.dtype, "nested": state.nested, "offset": float(state.offset) if state.nested else 0.0}
            if not isinstance(module, FourBitExperts):
                module.__class__ = _four_bit_class(type(module))
            count += 1
    return count


def four_bit_bytes(model) -> int:
    """Bytes of the experts' 4-bit data and statistics, all layers."""
    return sum(p.numel() * p.element_size() for m in model.modules() if isinstance(m, FourBitExperts)
               for n, p in m._parameters.items() if n.rsplit("_", 1)[-1] in ("nf4", "absmax", "absmax2", "code2"))


def as_trained_expert(w, quant_type: str, dtype):
    """A checkpoint's expert tensor as training saw it: cast to the compute dtype, quantized and dequantized flat
    (single quant, blocks of 64): equal to the slice of the fused tensor's round trip whenever the tensor's size
    and offset in it are multiples of 64 (every published MoE)."""
    from bitsandbytes import functional as F
    packed, state = quantize(w.to(dtype).reshape(-1), quant_type, DOUBLE_QUANT)
    return F.dequantize_4bit(packed, state).reshape(w.shape)


def trained_expert(name: str, t, get, cfg, into: str):
    """(name, tensor) the merged export writes for checkpoint expert tensor `name`: MXFP4 blocks (with their
    scales, from get(name)) as the dense tensor, and - merging into the weights as trained - round-tripped
    through 4 bits as training held them."""
    m = cfg.model
    dtype, out = getattr(torch, m.compute_dtype), t.dtype
    if name.endswith("_blocks"):
        name = name.removesuffix("_blocks")
        t, out = mxfp4_dense(t, get(name + "_scales"), dtype), torch.bfloat16
    if into == "dequantized" and m.quantization != "none":
        t = as_trained_expert(t, m.quantization, dtype)
    return name, t.to(out)


# ---- MXFP4 (gpt-oss's published experts) to the compute dtype, one tensor as it loads

def mxfp4_dense(blocks, scales, dtype):
    """The dense (experts, in, out) tensor of MXFP4 `blocks` (experts, out, groups, 16 bytes) and `scales`
    (experts, out, groups): per group of 32 values one scale 2**(s - 127); byte j holds values 2j (low nibble) and
    2j + 1 (high nibble). Expert by expert, so the transient is one expert's values."""
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    experts, rows, groups, width = blocks.shape
    out = torch.empty(experts, groups * width * 2, rows, dtype=dtype, device=blocks.device)
    for e in range(experts):
        b = blocks[e].to(torch.int64)
        vals = torch.stack((lut[b & 0x0F], lut[b >> 4]), dim=-1).reshape(rows, groups, width * 2)
        vals = torch.ldexp(vals, (scales[e].to(torch.int32) - 127).unsqueeze(-1).float())
        out[e] = vals.reshape(rows, groups * width * 2).t().to(dtype)
    return out


class Mxfp4ToDense(ConversionOps):
    def __init__(self, dtype):
        self.dtype = dtype

    def convert(self, input_dict, full_layer_name=None, **kwargs):
        first = lambda v: v[0] if isinstance(v, list) else v
        blocks = next(first(v) for k, v in input_dict.items() if k.endswith("_blocks"))
        scales = next(first(v) for k, v in input_dict.items() if k.endswith("_scales"))
        return {full_layer_name: mxfp4_dense(blocks, scales, self.dtype)}


# ---- the quantizer transformers' loader asks, per parameter

class ExpertsConfig(BitsAndBytesConfig):
    """bitsandbytes 4-bit settings that also cover the experts; mxfp4: the checkpoint's experts are MXFP4."""

    def __init__(self, *args, mxfp4: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.quant_method = METHOD
        self.mxfp4 = mxfp4


class ExpertsQuantizer(Bnb4BitHfQuantizer):
    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if super().param_needs_quantization(model, param_name, **kwargs):
            return True
        module, name = get_module_from_name(model, param_name)
        return name in EXPERT_WEIGHTS and is_experts(module)

    def get_quantize_ops(self):
        return ExpertsQuantize(self)

    def get_weight_conversions(self):
        if not self.quantization_config.mxfp4:
            return super().get_weight_conversions()
        op = Mxfp4ToDense(self.quantization_config.bnb_4bit_compute_dtype)
        return [WeightConverter([f"{n}_blocks", f"{n}_scales"], n, [op]) for n in EXPERT_WEIGHTS]

    def _process_model_after_weight_loading(self, model, **kwargs):
        adopt(model)
        return super()._process_model_after_weight_loading(model, **kwargs)


class ExpertsQuantize(Bnb4bitQuantize):
    def convert(self, input_dict, full_layer_name=None, model=None, **kwargs):
        out, rest = {}, {}
        qc = self.hf_quantizer.quantization_config
        for name, value in input_dict.items():
            module, attr = get_module_from_name(model, name)
            if attr in EXPERT_WEIGHTS and is_experts(module):
                value = value[0] if isinstance(value, list) else value
                out[name] = packed_parameter(value, qc.bnb_4bit_quant_type, DOUBLE_QUANT)
                module._is_hf_initialized = True
            else:
                rest[name] = value
        if rest:
            out.update(super().convert(rest, full_layer_name=full_layer_name, model=model, **kwargs))
        return out


if METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(METHOD)(ExpertsQuantizer)
if METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(METHOD)(ExpertsConfig)
