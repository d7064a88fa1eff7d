"""Log-probabilities of the trained tokens of sequences, which DPO, ORPO and GRPO score answers with: one forward
over right-padded rows, then log p(token) at each trained position only (labels shifted by one), from the final
hidden states through the detached lm_head when there is one, `chunk_tokens` positions at a time, so the full
fp32 logits never exist (as in the SFT loss)."""
from __future__ import annotations

from ... import data as D


def token_logps(model, rows: list, pad_id: int, device, chunk_tokens: int = 0, head=None) -> tuple:
    """(log p of every trained token [N], the row each belongs to [N], the number of rows) for `rows` (objects
    with input_ids and labels, engine.data.Encoded-like)."""
    import torch
    import torch.nn.functional as F

    from ..batches import collate, to_device
    from ..head import final_softcap
    batch = to_device(collate(rows, pad_id, False), device)
    labels = batch.pop("labels")
    out = model(**batch, use_cache=False).logits
    target = labels[:, 1:]
    keep = target != D.IGNORE
    row = torch.arange(target.shape[0], device=target.device).unsqueeze(1).expand_as(target)[keep]
    hidden, y = out[:, :-1][keep], target[keep]
    inner = model.module if hasattr(model, "module") else model
    cap = final_softcap(inner) if head is not None else None

    def piece(h, t):
        logits = (head(h) if head is not None else h).float()
        if cap:  # as the model's own forward does (Gemma 2): cap * tanh(logits / cap)
            logits = cap * torch.tanh(logits / cap)
        return -F.cross_entropy(logits, t, reduction="none")
    if head is None or not chunk_tokens:  # the model returned its logits: they exist whole anyway
        logps = piece(hidden, y) if y.numel() else hidden.new_zeros(0, dtype=torch.float32)
        return logps, row, target.shape[0]
    from torch.utils.checkpoint import checkpoint
    # one chunk's fp32 logits at a time, recomputed in backward rather than kept (as the SFT loss does)
    pieces = [checkpoint(piece, hidden[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
              for i in range(0, y.numel(), chunk_tokens)]
    logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return logps, row, target.shape[0]


def per_row(values, row, rows: int):
    """Sums of per-token `values` per row, and each row's token count."""
    import torch
    sums = torch.zeros(rows, dtype=values.dtype, device=values.device).index_add(0, row, values)
    return sums, torch.bincount(row, minlength=rows).to(values.dtype)
