"""Padding-free attention for packed rows, without flash-attention packages: each packed example attends to
itself alone, and no work is spent on the blocks between examples.

A packed row holds several examples back to back. SDPA over the whole row with the block-diagonal causal
mask that transformers derives from the restarting position ids isolates them, but it pays for every
masked block (a row of k examples of length L costs (kL)^2 instead of k L^2) and the mask rules out the
fast is_causal kernels. The collate step knows where examples start, so the lengths travel as
`rigtune_segments` through the model's kwargs (as flash-attention's `cu_seq_lens` do) and nothing is searched
for on the device. Three ways, by device:
  CUDA with torch's varlen_attn (flash-attention varlen, torch >= 2.9): one kernel per layer for the whole
    micro-batch, each example causal on its own;
  CUDA without it: one SDPA call with the block-diagonal causal mask built once per micro-batch;
  CPU: one causal SDPA call per example (on a GPU that loop is thousands of tiny kernel launches per step:
    measured on an H200, it held an 8B and a 1B model to the same ~1,700 tokens/s; bench/planner_accuracy).
A layer with attention sinks (gpt-oss: one learned logit per head that joins every softmax and attends to
nothing) or a sliding window shorter than an example runs one SDPA call per example on every device, with an
additive mask: the window as -inf and the sink as one more key and value of zeros whose logit is the sink.
Linear-attention layers (Qwen3.5's Gated DeltaNet) are isolated apart, by engine.torchside.linear_attention.
Anything else (generation with a cache, unpacked batches) takes transformers' own SDPA path.
"""
from __future__ import annotations

import inspect

NAME = "rigtune_packed"  # no "sdpa" in it: transformers checks a model for SDPA support by that substring
SINKS = {"gpt_oss"}  # model types whose attention has sinks (passed as s_aux), which transformers' SDPA lacks
_CACHE: dict = {}  # id(segments) -> (segments, per-micro-batch tensors): built once, used by every layer


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention interface: query [b, heads, s, d], key/value [b, kv_heads, s, d] ->
    ([b, s, heads, d], None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.get("rigtune_segments")
    p = dropout if module.training else 0.0
    sinks, window = kwargs.get("s_aux"), kwargs.get("sliding_window")
    if (sinks is not None or window) and attention_mask is None and (segments is None
                                                                    or key.shape[2] != query.shape[2]):
        # generation (a cache: keys reach back before the queries) or an unpacked row: each row is one example
        width = [[key.shape[2]]] * query.shape[0]
        return _per_example(query, key, value, width, p, scaling, window=window, sinks=sinks), None
    if segments is None or attention_mask is not None or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if sinks is not None or (window and max(n for row in segments for n in row) > window):
        return _per_example(query, key, value, segments, p, scaling, window=window, sinks=sinks), None
    if query.is_cuda:
        if p == 0.0 and varlen_call() is not None and query.dtype in (torch.bfloat16, torch.float16):
            return _varlen(query, key, value, segments, scaling), None
        return _masked(query, key, value, segments, p, scaling), None
    return _per_example(query, key, value, segments, p, scaling), None


def _cached(segments, device, build):
    key = (id(segments), str(device), build.__qualname__)
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not segments:
        _CACHE.clear()  # one micro-batch at a time
        hit = _CACHE[key] = (segments, build())
    return hit[1]


def varlen_call():
    """torch.nn.attention.varlen.varlen_attn as f(q, k, v, cu, max_len, scale, gqa), or None where this torch
    lacks it. Its causal switch changed between releases (is_causal, then window_size=(-1, 0))."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    native_gqa = "enable_gqa" in params

    def call(q, k, v, cu, longest, scale, gqa):
        if gqa and not native_gqa:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        extra = {"enable_gqa": True} if gqa and native_gqa else {}
        return varlen_attn(q, k, v, cu, cu, longest, longest, scale=scale, **causal, **extra)
    return call


def _varlen(query, key, value, segments, scaling):
    import torch
    b, heads, s, d = query.shape

    def build():
        lengths = [n for row in segments for n in row]
        cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        return cu.to(query.device), max(lengths)
    cu, longest = _cached(segments, query.device, build)
    q = query.transpose(1, 2).reshape(b * s, heads, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    out = varlen_call()(q, k, v, cu, int(longest), scaling, key.shape[1] != heads)
    return out.reshape(b, s, heads, d)


def block_causal_mask(segments, width: int, device):
    """[b, 1, s, s] booleans: True where a position may attend (same example, not later)."""
    import torch
    seg = torch.tensor([[i for i, n in enumerate(row) for _ in range(n)] for row in segments], device=device)
    same = seg[:, :, None] == seg[:, None, :]
    return (same & torch.ones(width, width, dtype=torch.bool, device=device).tril())[:, None]


def _masked(query, key, value, segments, dropout, scaling):
    import torch.nn.functional as F
    mask = _cached(segments, query.device, lambda: block_causal_mask(segments, query.shape[2], query.device))
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()


def _per_example(query, key, value, segments, dropout, scaling, window=None, sinks=None):
    import torch
    import torch.nn.functional as F
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, lengths in enumerate(segments):
        parts, start = [], 0
        for n in lengths:
            end = start + n
            k, v = key[b:b + 1, :, start:end], value[b:b + 1, :, start:end]
            q = query[b:b + 1, :, start:end] if query.shape[2] == key.shape[2] else query[b:b + 1]
            if sinks is None and (not window or n <= window) and q.shape[2] == n:
                parts.append(F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                            is_causal=True, enable_gqa=gqa))
            else:
                mask, k, v = _bias(q.shape[2], window, sinks, k, v)
                parts.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                            scale=scaling, enable_gqa=gqa))
            start = end
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous()


def _bias(nq: int, window, sinks, key, value):
    """(additive mask, key, value) for one example's last `nq` queries over its keys: causal, within `window`
    tokens when one is given (a query sees the keys less than `window` positions back, as transformers' sliding
    windows do), and with a sink per head: a zero key and value appended, whose column holds the head's sink."""
    import torch
    nk = key.shape[2]
    i = torch.arange(nk - nq, nk, device=key.device)[:, None]
    j = torch.arange(nk, device=key.device)[None, :]
    allowed = (j <= i) & ((i - j < window) if window else True)
    mask = torch.zeros(nq, nk, dtype=key.dtype, device=key.device).masked_fill(~allowed, float("-inf"))
    if sinks is None:
        return mask, key, value
    heads = sinks.shape[0]
    sink = sinks.to(key.dtype).reshape(1, heads, 1, 1).expand(1, heads, nq, 1)
    mask = torch.cat([mask.expand(1, heads, nq, nk), sink], dim=-1)
    zero = key.new_zeros(1, key.shape[1], 1, key.shape[3])
    return mask, torch.cat([key, zero], dim=2), torch.cat([value, zero.to(value.dtype)], dim=2)


def _no_mask(*args, **kwargs):
    return None  # the segments isolate the examples; there is nothing to mask


def register() -> str:
    """Make NAME an attn_implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    return NAME


def segments(position_ids) -> list:
    """Example lengths per packed row, from position ids (lists) that restart at 0 (pads extend the last one).
    engine.data.collate calls it on the CPU, so the device is never asked."""
    out = []
    for row in position_ids:
        starts = [i for i, p in enumerate(row) if p == 0] or [0]
        out.append([b - a for a, b in zip(starts, starts[1:] + [len(row)])])
    return out
