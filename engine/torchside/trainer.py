"""The training loop, run as `python -m engine.torchside.trainer RUN_DIR [--resume]` (under `accelerate launch`
when it runs several processes; engine.launch builds that command).

Read it top to bottom: `train` is the loop, one optimizer step per turn; `forward_backward` and
`clip_gradients` are the step; `finish` is the end; the entry point comes last. Around it, in modules of their
own: setup.py builds everything the loop needs into one Run record (runstate.py); recovery.py holds
checkpoints, --resume, the out-of-memory fallback and bad steps; process.py the signals, the lock and the
fault-injection seam; and methods/ what one way of fine-tuning adds - its data, the loss of a micro-batch and
its eval (today supervised fine-tuning, methods/sft.py). A new method is a module there, not a branch here.

Only rank 0 writes the event stream, status.json, checkpoints and the adapter. Every rank runs the same
steps: step s uses micro-batches s*W*A ... of the epoch's order (W ranks, A accumulation steps), so the data
position and the RNG (reseeded from seed, step and rank at each step) follow from the step alone. That is
what makes --resume exact.

Faults end cleanly: a signal finishes the step and saves (a second one aborts); a full disk keeps the last
good checkpoint; a NaN/inf loss stops before it is saved; a CUDA out-of-memory either stops with advice or,
with oom_fallback, halves the micro-batch (doubling accumulation) and resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
from pathlib import Path

from .. import calibration
from .. import checkpoint as C
from ..errors import BadInput
from ..events import ADAPTER, EventLog, read_status_raw, write_status
from .process import Aborted, TrainingFailed, quiet_libraries
from .recovery import gathered, is_oom, recover_from_oom, save, skip_bad_step
from .runstate import Run, final_figures, log_step
from .saving import save_adapter
from .setup import announce, lr_factor, mark_load_done, setup


# ---------------------------------------------------------------------------- the loop

def train(run_dir: Path, resume: bool, allow_changes: bool = False, probe: bool = False) -> int:
    import torch
    run = setup(run_dir, resume, allow_changes, probe)
    announce(run)
    mark_load_done(run)
    tc = run.cfg.train
    step, bad_steps, reason, message = run.start_step, 0, "finished", ""
    run.started = time.time()
    run.model.train()
    while step < run.total:
        t0 = time.time()
        torch.manual_seed((tc.seed * 1_000_003 + step * 1009 + run.rank) % 2**63)
        group = run.layout.step_batches(step)
        size = run.method.sizes(group)  # the step's tokens, and what its loss is a mean over: all ranks
        try:
            step_loss, figures = forward_backward(run, group, step, size.units)
        except Exception as e:
            if not is_oom(e):
                raise
            step = recover_from_oom(run, step)
            continue
        size = run.method.sizes(group)  # again: a method that samples its answers (GRPO) has counted them now
        run.energy.count(size.tokens)  # processed, whether or not the update is applied
        grad_norm = clip_gradients(run)
        if run.gather_sum(0.0 if math.isfinite(step_loss) and math.isfinite(grad_norm) else 1.0) > 0:
            bad_steps = skip_bad_step(run, step, step_loss, bad_steps)  # every rank skips the update together
            step += 1
            continue
        lr = tc.learning_rate * lr_factor(step, run.total, run.warmup, tc.lr_scheduler)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = run.gather_sum(step_loss) / max(1, size.units)
        figures = {k: run.gather_sum(v) / max(1, size.units) for k, v in figures.items()}
        stop_now = run.gather_sum(1.0 if run.stop.requested else 0.0) > 0
        if run.main and (step % tc.log_every_steps == 0 or step == run.total or stop_now):
            log_step(run, step, loss=loss_value, lr=lr, grad_norm=grad_norm, trained_tokens=size.trained_tokens,
                     tokens=size.tokens, seconds=time.time() - t0, figures=figures)
        if (tc.eval_every_steps and step % tc.eval_every_steps == 0) or step == run.total:
            run.method.evaluate(run, step)
        if (tc.save_every_steps and step % tc.save_every_steps == 0) or step == run.total or stop_now:
            save(run, step)
        if stop_now and step < run.total:
            reason, message = "stopped", f"stopped on request at step {step} of {run.total}"
            break
    finish(run, step, reason, message)
    return 0


def forward_backward(run: Run, group: list, step: int, units: int) -> tuple[float, dict]:
    """This rank's micro-batches of the step, forward and backward: the sums of their losses and of the
    method's figures."""
    import torch
    tc = run.cfg.train
    mine = group[run.rank * run.layout.accum:(run.rank + 1) * run.layout.accum]
    step_loss, figures = 0.0, {}
    for i, items in enumerate(mine):
        if i == 0:
            run.faults.forward(step + 1)
        last = i == len(mine) - 1
        sync = contextlib.nullcontext() if last or run.sharded else run.accelerator.no_sync(run.model)
        # activation_offload: what forward saves for backward waits in CPU RAM, not in GPU memory
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=run.device.type == "cuda")
                   if tc.activation_offload else contextlib.nullcontext())
        with sync, offload:
            loss, mb_figures = run.method.loss(run, items)
            loss = run.faults.loss(step + 1, loss)
            # mean over the step's units on all ranks (DDP averages gradients over ranks)
            run.accelerator.backward(loss * run.world / max(1, units))
        step_loss += float(loss.detach())
        for k, v in mb_figures.items():
            figures[k] = figures.get(k, 0.0) + float(v)
    if run.sharded and not run.loaded.sharded_adapters:  # sharded adapters: FSDP reduce-scattered the gradients
        from . import fsdp
        fsdp.average_gradients(run.params, run.world)
    return step_loss, figures


def clip_gradients(run: Run) -> float:
    """Clip to max_grad_norm (when set); the norm before clipping."""
    import torch
    if run.loaded.sharded_adapters:  # gradients are shards: the norm over all ranks, then clip each shard
        norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if run.cfg.train.max_grad_norm > 0:
        return float(run.accelerator.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in run.params if p.grad is not None])))


# ---------------------------------------------------------------------------- the end

def finish(run: Run, step: int, reason: str, message: str) -> None:
    """Measured memory, the adapter, the end event."""
    adapter_state, _ = gathered(run)
    shards = shard_sizes(run)
    if run.main:
        memory = measured_memory(run.device)
        run.log.write("memory", **memory, **run.load_memory, **shards)
        if not run.probe:  # a probe's trial keeps no adapter; a run's peak and speed join the probe's figures
            save_adapter(run.run_dir, run.loaded.model, adapter_state)
            calibration.add_run(run.cfg, memory, run.speeds, run.run_dir.name)
        run.log.write("final", **final_figures(run))
        run.log.write("end", sync=True, step=step, reason=reason, message=message or f"finished {run.total} steps")
        run.status(state=reason, step=step, total_steps=run.total)
        print(f"[rigtune] {reason} at step {step}; adapter in {run.run_dir / ADAPTER}", flush=True)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()


def shard_sizes(run: Run) -> dict:
    """Under FSDP: the bytes each rank holds of the adapters and their optimizer state (and gradients, where
    not freed yet) at the end of the run, gathered from every rank (a collective), so the event stream shows
    how they are split."""
    if not run.sharded:
        return {}
    import torch.distributed as dist

    from . import fsdp
    mine = fsdp.local_state_bytes(run.params, run.optimizer)
    every = [0] * run.world
    dist.all_gather_object(every, mine)
    return {"adapter_state_bytes": every}


def measured_memory(device) -> dict:
    """This process's peaks: GPU memory reserved by the caching allocator (what the planner predicts) and RSS.
    After announce() they cover training only: the load's own peak is kept apart (load_peak_gib)."""
    import resource

    import torch
    out = {"device": str(device), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


# ---------------------------------------------------------------------------- entry point

def main(argv=None) -> int:
    quiet_libraries()
    ap = argparse.ArgumentParser(prog="engine.torchside.trainer", description="rigtune's trainer.")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--allow-changes", action="store_true")
    ap.add_argument("--probe", action="store_true", help="one trial of `rigtune probe` (engine.probe)")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    main_rank = os.environ.get("LOCAL_RANK", "0") == "0"
    reason = "error"
    try:
        return train(run_dir, args.resume, args.allow_changes, args.probe)
    except BadInput as e:
        code, msg = 2, str(e)
    except (TrainingFailed, C.DiskFull) as e:
        code, msg = 1, str(e)
    except Aborted as e:
        code, msg, reason = 0, f"{e}; the last complete checkpoint is intact", "stopped"
    except Exception as e:  # a real failure: traceback into train.log, one line into the event stream
        if C.is_disk_full(e):  # a write the savers do not wrap (events, status, the run file): same message
            code, msg = 1, C.disk_full_message("the run directory", run_dir)
        else:
            traceback.print_exc()
            code, msg = 1, f"{type(e).__name__}: {e}"
            if "peer" in msg.lower() or "remote worker" in msg.lower():  # gloo/NCCL: another rank died first
                msg = ("another training process failed first (its '[rigtune] rank N' line in train.log says why); "
                       f"this one then lost its connection: {msg[:200]}")
    if not main_rank:
        print(f"[rigtune] rank {os.environ.get('RANK', '?')} {reason}: {msg}", file=sys.stderr, flush=True)
        return code
    print(f"[rigtune] {reason}: {msg}", file=sys.stderr, flush=True)
    report_end(run_dir, reason, msg, code)
    return code


def report_end(run_dir: Path, reason: str, message: str, code: int) -> None:
    """The end event and the final status, after a failure. On a full disk these small writes can fail too:
    then train.log (already written) is the only record, and the exit code still says it failed."""
    try:
        step = read_status_raw(run_dir).get("step")
        EventLog(run_dir).write("end", sync=True, step=step, reason=reason, message=message, exit_code=code)
        write_status(run_dir, pid=os.getpid(), pgid=os.getpgid(0), state=reason, message=message)
    except OSError as e:
        print(f"[rigtune] could not record the end in {run_dir}: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
