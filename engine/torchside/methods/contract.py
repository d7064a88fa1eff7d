"""What the training loop (engine.torchside.trainer) asks of a training method: the Method protocol - no base
class to inherit - and the Sizes of a step."""
from __future__ import annotations

from typing import NamedTuple, Protocol


class Sizes(NamedTuple):
    """What one step's micro-batches hold, over all ranks."""
    tokens: int           # every token the model runs on (the step event's tokens and tokens_per_s)
    trained_tokens: int   # the tokens it learns from (the step event's trained_tokens)
    units: int            # what the step's loss is a mean over (SFT: the trained tokens; a preference method: pairs)


class Method(Protocol):
    def prepare(self, run) -> None:
        """Read and tokenize the dataset once run.tokenizer is loaded: set run.seqs (the training items, which
        Layout orders and batches), run.eval_seqs, run.report (engine.data's report) and run.data_files."""

    def sizes(self, group: list) -> Sizes:
        """The sizes of one step: `group` holds every rank's micro-batches of it (lists of training items). The
        loop asks before the forward (units) and again after it (tokens: a method that samples its answers
        knows them only then); every rank asks at the same points, so it may use a collective."""

    def loss(self, run, items: list) -> tuple:
        """Forward one micro-batch on run.model: (its loss summed over its units, a tensor to backpropagate;
        {figure name: value summed over its units}). The loop takes the mean over the step's units (all
        ranks) of both, and writes the figures into the step event after the common keys. Every rank must return
        the same figure names in the same order, even for an empty micro-batch: each is one all-reduce, and a
        name one rank lacks leaves the others waiting for it."""

    def evaluate(self, run, step: int) -> None:
        """The eval event at `step` (and whatever else the method checks there); on rank 0, and on every rank
        of a sharded model, which runs forward together. The loop calls it on every rank."""
