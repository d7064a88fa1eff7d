"""Micro-batches: which rows each rank trains on at each step (Layout), and the token sequences engine.data
prepares (plain Python) collated as tensors for the model."""
from __future__ import annotations

import math

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


class Layout:
    """Which packed rows each rank trains on at each step. The rows of a step depend only on the effective
    batch, so halving the micro-batch and doubling accumulation keeps the data order."""

    def __init__(self, seqs, micro_batch: int, accum: int, world: int, seed: int):
        import torch
        self.seqs, self.mbs, self.accum, self.world, self.seed = seqs, micro_batch, accum, world, seed
        self.n_micro = math.ceil(len(seqs) / micro_batch)
        self.per_step = world * accum
        self.steps_per_epoch = max(1, self.n_micro // self.per_step)
        self._torch, self._epoch, self._order = torch, None, None

    def step_batches(self, step: int) -> list:
        """All micro-batches of `step`, for every rank: rank r takes [r*A, (r+1)*A)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            g = self._torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._order = epoch, self._torch.randperm(len(self.seqs), generator=g).tolist()
        out = []
        for k in range(self.per_step):
            m = (pos * self.per_step + k) % self.n_micro
            out.append([self.seqs[i] for i in self._order[m * self.mbs:(m + 1) * self.mbs]])
        return out
