"""Training methods: what one way of fine-tuning adds to the loop (engine.torchside.trainer), which is the same for
every method - data order, accumulation, clipping, the schedule, recovery, checkpoints and the events around them.

A method is one class in a module of this package that does what contract.Method lists, entered in METHODS
under its name (the run file's [train] method; "sft" until that key exists). A new method (DPO, ORPO, GRPO)
is a new module here and a line in METHODS, not a branch in the loop."""
from __future__ import annotations

from ...errors import BadInput
from .contract import Method, Sizes
from .sft import SFT

__all__ = ["METHODS", "Method", "Sizes", "method_for"]

METHODS = {"sft": SFT}


def method_for(cfg) -> Method:
    """The training method the run file names ([train] method; supervised fine-tuning until it names one)."""
    name = getattr(cfg.train, "method", "sft")
    if name not in METHODS:
        raise BadInput(f"unknown training method {name!r}; rigtune trains with {', '.join(METHODS)}.",
                       key="train.method")
    return METHODS[name]()
