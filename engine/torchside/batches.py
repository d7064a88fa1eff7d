"""Micro-batches as tensors: the token sequences engine.data prepares (plain Python) collated for the model."""
from __future__ import annotations

from ..data import IGNORE
from .attention import segments


def collate(seqs: list, pad_id: int, packing: bool) -> dict:
    """A micro-batch as tensors. Packed rows carry position ids that restart at each example and no attention
    mask, so examples never attend to each other (engine.torchside.attention runs SDPA once per example; transformers'
    own attentions derive the block-diagonal mask or flash-attention's varlen lengths from the position
    ids). Rows are padded at the end to the longest row: pad positions continue the last example's
    numbering, come after every real token (so nothing real attends to them) and are not trained.
    Unpacked batches use an attention mask instead. Packed batches also carry "segments", each row's example
    lengths, a plain list that stays on the CPU (see to_device)."""
    import torch
    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
    if packing:
        pos = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s.position_ids)
            pos[i, :n] = torch.tensor(s.position_ids)
            if n < width:
                last = s.position_ids[-1] if n else -1
                pos[i, n:] = torch.arange(last + 1, last + 1 + width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "segments": segments(pos.tolist())}
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        mask[i, :len(s.input_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def to_device(batch: dict, device) -> dict:
    """A collated batch on `device`: the tensors moved, the plain lists (segments) left as they are."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
