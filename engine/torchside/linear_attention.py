"""Packed rows through linear-attention layers (Qwen3.5 / 3.6's Gated DeltaNet), without leaking between examples.

Such a layer carries state along the sequence: a causal depthwise conv1d over the last few tokens, and a
recurrent state that the delta rule updates at every token. Neither sees position ids. transformers 5.25 passes
flash-attention's `cu_seq_lens_q` to the delta rule as `cu_seqlens`, but its PyTorch fallbacks (what runs on a
CPU, or on a GPU without flash-linear-attention and causal-conv1d) ignore it, and the conv1d never gets it: over
a packed row, each example would start from the state the one before it left. So rigtune runs each packed
example through these layers on its own, split at the starts it already knows (`rigtune_segments`, from
engine.torchside.batches.collate) or, on the flash-attention path, at `cu_seq_lens_q`. Generation (a cache)
and unpacked batches run as transformers wrote them.
"""
from __future__ import annotations

import functools

SUFFIX = "GatedDeltaNet"  # Qwen3_5GatedDeltaNet, Qwen3_5MoeGatedDeltaNet, Qwen3NextGatedDeltaNet


def isolate(model) -> int:
    """Make every linear-attention layer of `model` run packed examples one at a time (idempotent). Returns how
    many layers it wrapped."""
    n = 0
    for module in model.modules():
        if type(module).__name__.endswith(SUFFIX) and not getattr(module, "_rigtune_isolated", False):
            module.forward = functools.partial(_per_example, module.forward)
            module._rigtune_isolated = True
            n += 1
    return n


def _starts(kwargs, batch: int):
    """Each row's example lengths, or None when the batch is not packed."""
    segments = kwargs.pop("rigtune_segments", None)
    if segments is not None:
        return segments
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and batch == 1:  # flash-attention's packed row: one row, its examples' offsets
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
            kwargs.pop(key, None)
        edges = cu.tolist()
        return [[b - a for a, b in zip(edges, edges[1:])]]
    return None


def _per_example(forward, hidden_states, cache=None, attention_mask=None, **kwargs):
    import torch
    segments = _starts(kwargs, hidden_states.shape[0])
    if segments is None or cache is not None or attention_mask is not None or all(len(r) == 1 for r in segments):
        return forward(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
    rows = []
    for b, lengths in enumerate(segments):
        parts, start = [], 0
        for n in lengths:
            parts.append(forward(hidden_states[b:b + 1, start:start + n], **kwargs))
            start += n
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
