"""Padding-free attention for packed rows, without flash-attention: SDPA run once per packed example.

A packed row holds several examples back to back. SDPA over the whole row with the block-diagonal causal
mask that transformers derives from the restarting position ids isolates them, but it pays for every
masked block (a row of k examples of length L costs (kL)^2 instead of k L^2) and the mask rules out the
fast is_causal kernels. Here each example gets its own causal SDPA call: the same numbers, the work of
the examples alone. The collate step knows where examples start, so no mask is built and nothing is
searched for on the device (the lengths travel as `rigtune_segments` through the model's kwargs, as
flash-attention's `cu_seq_lens` do). Anything else (generation with a cache, unpacked batches) takes
transformers' own SDPA path.
"""
from __future__ import annotations

NAME = "rigtune_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention interface: query [b, heads, s, d], key/value [b, kv_heads, s, d] ->
    ([b, s, heads, d], None)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = kwargs.get("rigtune_segments")
    if segments is None or attention_mask is not None or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b, lengths in enumerate(segments):
        parts, start = [], 0
        for n in lengths:
            end = start + n
            parts.append(F.scaled_dot_product_attention(
                query[b:b + 1, :, start:end], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
                dropout_p=dropout if module.training else 0.0, scale=scaling, is_causal=True, enable_gqa=gqa))
            start = end
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


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
