"""What lets a run stop and come back: checkpoints (written by rank 0, complete or absent) and --resume from the
newest verified one; a CUDA out-of-memory, which stops with the planner's advice or, with oom_fallback, halves
the micro-batch and goes back to the last checkpoint; a NaN/inf step, skipped and never saved. (A stop signal
only sets a flag the loop reads after each step: engine.torchside.process.StopFlag.)"""
from __future__ import annotations

import math
import time

from .. import checkpoint as C
from .. import planner as P
from .. import runfile
from ..errors import BadInput
from ..events import RUN_FILE
from .batches import Layout
from .fsdp import local
from .process import TrainingFailed
from .runstate import Run, log_step
from .saving import load_checkpoint, save_checkpoint


def resume_from_checkpoint(run: Run, allow_changes: bool) -> None:
    """With --resume: the newest verified checkpoint whose run file and data still match (engine.checkpoint
    says which were skipped, and why) goes into the model and optimizer; the run starts at its step."""
    path, run.skipped = C.check_resume(run.run_dir, run.cfg, run.data_files, allow_changes)
    if path is not None:
        state = load_checkpoint(path, run.loaded.model, run.optimizer,
                                run.params if run.loaded.sharded_adapters else None)
        run.start_step, run.elapsed_before, run.resumed_from = state["step"], state.get("elapsed_s", 0.0), str(path)
        run.energy.restore(state.get("energy"))


def gathered(run: Run) -> tuple:
    """(adapter tensors, optimizer state) gathered whole when the adapters are sharded - every rank takes part -,
    else (None, None): rank 0 reads them from its own whole copy."""
    if not run.loaded.sharded_adapters:
        return None, None
    from . import fsdp
    return fsdp.full_adapter_state(run.loaded.model), fsdp.full_optimizer_state(run.optimizer)


def save(run: Run, step: int) -> None:
    """A checkpoint of `step` (rank 0 writes it; the others wait). A probe's trial keeps none."""
    if run.probe:
        return
    adapter_state, optimizer_state = gathered(run)
    if run.main:
        run.status(state="checkpointing", step=step, total_steps=run.total)
        layout = run.layout
        state = {"step": step, "total_steps": run.total, "epoch": step // layout.steps_per_epoch,
                 "position_in_epoch": step % layout.steps_per_epoch, "steps_per_epoch": layout.steps_per_epoch,
                 "micro_batch_size": layout.mbs, "gradient_accumulation_steps": layout.accum,
                 "seed": run.cfg.train.seed, "world_size": run.world, "rng": "reseeded from (seed, step, rank) each step",
                 "elapsed_s": run.elapsed(), "energy": run.energy.state()}
        path = save_checkpoint(run.run_dir, step, run.loaded.model, run.optimizer, state,
                               run.cfg.train.keep_checkpoints, run.shape, run.data_print, run.faults,
                               adapter_state=adapter_state, optimizer_state=optimizer_state)
        run.log.write("checkpoint", step=step, path=str(path.relative_to(run.run_dir)))
    run.accelerator.wait_for_everyone()


def is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def recover_from_oom(run: Run, step: int) -> int:
    """A CUDA out-of-memory in forward or backward. Without [train] oom_fallback (or at micro-batch 1) the run
    stops with advice. With it, the micro-batch halves and accumulation doubles (the same effective batch,
    so the same data order), training goes back to the last good checkpoint (or the start), and the run
    file records the change. Returns the step to go on from."""
    import torch
    cfg, layout = run.cfg, run.layout
    run.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not (cfg.train.oom_fallback and layout.mbs > 1):
        raise TrainingFailed(f"out of memory at step {step + 1} (micro-batch {layout.mbs}, max_seq_len "
                             f"{cfg.data.max_seq_len}). {oom_advice(run)}") from None
    old = (layout.mbs, layout.accum)
    mbs = layout.mbs // 2
    run.layout = Layout(run.seqs, mbs, P.keep_effective_batch(layout.mbs, layout.accum, mbs), run.world, cfg.train.seed)
    path, _ = C.newest_verified(run.run_dir)
    if path is not None:
        step = load_checkpoint(path, run.loaded.model, run.optimizer,
                               run.params if run.loaded.sharded_adapters else None)["step"]
    else:
        with torch.no_grad():
            for n, p in run.loaded.model.named_parameters():
                if n in run.initial_adapter:
                    local(p).copy_(run.initial_adapter[n].to(local(p).device))
        run.optimizer.state.clear()
        step = 0
    if run.main:
        run.log.write("oom_fallback", step=step, micro_batch_size=[old[0], run.layout.mbs],
                      gradient_accumulation_steps=[old[1], run.layout.accum], resumed_from=str(path) if path else None)
        values = cfg.to_dict()
        values["train"].update(micro_batch_size=run.layout.mbs, gradient_accumulation_steps=run.layout.accum)
        history = (f"history: out of memory at micro_batch_size {old[0]}; rigtune changed it to {run.layout.mbs} "
                   f"with gradient_accumulation_steps {run.layout.accum} ({time.strftime('%Y-%m-%d %H:%M')})")
        runfile.save(values, run.run_dir / RUN_FILE, header=history)
        print(f"[rigtune] {history}; resuming from step {step}", flush=True)
    return step


def oom_advice(run: Run) -> str:
    """What to change after an out-of-memory: the planner's suggestion (engine.planner.suggest, the function
    behind `rigtune plan` and the wizard's f) for a budget that takes a quarter off what the settings decide
    (everything but the weights and the CUDA context) - so only settings the engine accepts for this strategy,
    all of them, verified against that budget."""
    import json

    import torch
    cfg = run.cfg
    tail = " `rigtune plan RUN_FILE` shows what fits; [train] oom_fallback = true halves the micro-batch by itself."
    config = run.loaded.model.config.to_dict()
    try:
        arch = P.arch_from_config(config, cfg.model.base)  # it reads a text_config itself
    except BadInput:
        return (f"Try: a smaller micro_batch_size or max_seq_len than {cfg.train.micro_batch_size} and "
                f"{cfg.data.max_seq_len}; the planner cannot read this model's shape." + tail)
    card = (torch.cuda.get_device_properties(run.device).total_memory / 2**30 if run.device.type == "cuda" else None)
    inp = P.input_from_run(cfg, arch, [card or 1e9] * run.world, None)
    planned, terms = P.peak(inp), P.breakdown(inp)
    settled = terms["weights"] + P.CUDA_CONTEXT_GIB
    budget = min(card or planned, planned) - 0.25 * (planned - settled)
    advice = P.suggest(inp, budget, margin=0.0)  # the quarter off is the room to spare; no margin on top
    if advice is None:
        return "Nothing rigtune can change makes this run lighter on this card; a smaller model or a larger card." + tail
    keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in advice["keys"].items())
    return (f"Try all of: {keys} ({'; '.join(advice['steps'])}; planned {advice['peak_gib']:.2f} GiB, a quarter "
            f"less than this run's {planned:.2f} GiB for what the settings decide)." + tail)


def skip_bad_step(run: Run, step: int, step_loss: float, bad_steps: int) -> int:
    """A NaN/inf loss or gradient: drop the update and log the step as skipped; stop after max_bad_steps."""
    run.optimizer.zero_grad(set_to_none=True)
    bad_steps += 1
    tc = run.cfg.train
    if bad_steps >= tc.max_bad_steps:
        what = "loss" if not math.isfinite(step_loss) else "gradient norm"
        raise TrainingFailed(
            f"the {what} became NaN/inf at step {step + 1} ({bad_steps} bad step(s)); the last checkpoint "
            f"is kept and this state is not saved. Lower learning_rate (now {tc.learning_rate:g}, try "
            f"{tc.learning_rate / 4:g}) or keep max_grad_norm on, then resume.")
    if run.main:
        log_step(run, step + 1, skipped=True)
    return bad_steps
