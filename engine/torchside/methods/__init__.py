"""Training methods: what one way of fine-tuning adds to the loop (engine.torchside.trainer), which is the same for
every method - data order, accumulation, clipping, the schedule, recovery, checkpoints and the events around them.

A method is one class in a module of this package that does what contract.Method lists, entered in METHODS
under its name (the run file's [train] method). A new method is a new module here and a line in METHODS, not a
branch in the loop: SFT (sft.py), DPO and ORPO (pref.py), GRPO (grpo.py), and what `rigtune probe` trains
(probe.py)."""
from __future__ import annotations

from functools import partial

from ...errors import BadInput
from .contract import Method, Sizes
from .grpo import GRPO
from .pref import Preference
from .sft import SFT

__all__ = ["METHODS", "Method", "Sizes", "method_for"]

METHODS = {"sft": SFT, "dpo": partial(Preference, "dpo"), "orpo": partial(Preference, "orpo"), "grpo": GRPO}


def method_for(cfg) -> Method:
    """The training method the run file names ([train] method)."""
    name = cfg.train.method
    if name not in METHODS:
        raise BadInput(f"unknown training method {name!r}; rigtune trains with {', '.join(METHODS)}.",
                       key="train.method")
    return METHODS[name]()
