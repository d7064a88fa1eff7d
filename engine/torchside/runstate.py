"""The Run record that every part of the trainer passes around (setup builds it; the loop, recovery and the
training method read and update it), and the writes every part makes through it: status.json, the step event
(written nowhere else) and warnings."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..energy import RunEnergy
from ..events import EventLog, write_status
from .batches import Layout
from .process import Faults, StopFlag


@dataclass
class Run:
    """Everything one training process needs, built once by engine.torchside.setup.setup()."""
    cfg: object
    run_dir: Path
    accelerator: object
    rank: int
    world: int
    main: bool                      # writes the run directory (each machine's first process)
    sharded: bool
    log: EventLog | None
    stop: StopFlag
    faults: Faults
    method: object = None           # the training method (engine.torchside.methods): data, loss, eval
    tokenizer: object = None
    load_cfg: object = None         # cfg with model.base where the weights are on this machine (fetch_base)
    pad_id: int = 0
    seqs: list = field(default_factory=list)        # the method's training items, in the order Layout takes them
    eval_seqs: list = field(default_factory=list)   # and its held-out ones
    report: object = None           # engine.data's report on the dataset (the start event's data, format)
    layout: Layout = None
    total: int = 0
    warmup: int = 0
    shape: dict = field(default_factory=dict)
    data_print: str = ""
    data_files: list = field(default_factory=list)
    loaded: object = None           # engine.torchside.model.Loaded: the PeftModel, its head, its kernels
    model: object = None            # what forward runs on: the PeftModel, DDP-wrapped when several ranks
    optimizer: object = None
    params: list = field(default_factory=list)
    initial_adapter: dict = field(default_factory=dict)
    start_step: int = 0
    resumed_from: str | None = None
    skipped: list = field(default_factory=list)
    elapsed_before: float = 0.0     # training time of the runs this one resumes
    started: float = 0.0            # when this process's loop began
    lock: object = None
    tracking: bool = False          # report_to trackers are running (rank 0)
    load_memory: dict = field(default_factory=dict)  # the load's GPU peak, kept apart from training's
    energy: RunEnergy = field(default_factory=lambda: RunEnergy(0.0))  # energy, cost and tokens so far
    probe: bool = False             # a trial of `rigtune probe`: it measures, and keeps no checkpoint or adapter
    speeds: list = field(default_factory=list)  # this process's logged tokens/s, for the measured figures (calibration)

    @property
    def device(self):
        return self.accelerator.device

    def elapsed(self) -> float:
        return round(self.elapsed_before + time.time() - (self.started or time.time()), 2)

    def status(self, **fields) -> None:
        if self.main:
            write_status(self.run_dir, pid=os.getpid(), pgid=os.getpgid(0), **fields)

    def gather_sum(self, x: float) -> float:
        """The sum of x over all ranks (a collective: every rank calls it at the same point)."""
        if self.world == 1:
            return x
        import torch
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(t, reduction="sum"))


def log_step(run: Run, step: int, *, loss: float | None = None, lr: float = 0.0, grad_norm: float | None = None,
             tokens: int = 0, trained_tokens: int = 0, seconds: float = 0.0, skipped: bool = False,
             figures: dict | None = None) -> None:
    """The step event (the only place it is written) and status.json. `figures`: the method's own per-step
    numbers (rounded like the loss), after the common ones."""
    extra = {k: None if v is None else round(v, 6) for k, v in (figures or {}).items()}
    if skipped:
        extra["skipped"] = True
    elif tokens and seconds:
        run.speeds.append(tokens / seconds)
    run.log.write("step", step=step, epoch=round(step / run.layout.steps_per_epoch, 4),
                  loss=None if loss is None else round(loss, 6), lr=lr,
                  grad_norm=None if grad_norm is None else round(grad_norm, 6), tokens=tokens,
                  trained_tokens=trained_tokens, tokens_per_s=round(tokens / seconds, 1) if tokens and seconds else 0.0,
                  elapsed_s=run.elapsed(), **extra, **run.energy.step_fields())
    run.status(state="training", step=step, total_steps=run.total)
    if run.tracking and not skipped:
        run.accelerator.log({"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                             "train/tokens_per_s": tokens / seconds if tokens and seconds else 0.0,
                             **{f"train/{k}": v for k, v in (figures or {}).items()}}, step=step)


def final_figures(run: Run) -> dict:
    """The final event: the run's energy and its cost, and what the same tokens would cost on a rented card
    (engine.energy, engine.cost), planned from the loaded model's shape."""
    from .. import planner as P
    try:
        arch = P.arch_from_config(run.loaded.model.config.to_dict(), run.cfg.model.base)
    except Exception:  # noqa: BLE001 - a shape the planner cannot read: the final event says there is no estimate
        arch = None
    return run.energy.final(run.cfg, arch, run.elapsed())


def warn(run: Run, message: str) -> None:
    """A warning event, and the same line in train.log."""
    if run.main:
        run.log.write("warning", message=message)
        print(f"[rigtune] warning: {message}", flush=True)
