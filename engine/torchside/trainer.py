"""The training loop, run as `python -m engine.torchside.trainer RUN_DIR [--resume]` (under `accelerate launch`
when it runs several processes; engine.launch builds that command).

Read it top to bottom: `train` is the loop, one optimizer step per turn; `setup` builds everything it needs
into one Run record; the named helpers after it recover from an out-of-memory or a NaN step, log, evaluate
and save; the process machinery (signals, lock, fault injection, optimizer, schedule, data layout) and the
entry point come last.

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
import fcntl
import math
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .. import checkpoint as C
from .. import data as D
from .. import planner as P
from .. import runfile
from ..errors import BadInput
from ..events import ADAPTER, LOCK, RUN_FILE, EventLog, read_status_raw, write_status
from .batches import collate, to_device
from .fsdp import local
from .loss import evaluate, loss_sum, sample
from .saving import load_checkpoint, save_adapter, save_checkpoint


class Aborted(Exception):
    """A second stop signal: leave at once (the last complete checkpoint stays as it is)."""


class TrainingFailed(Exception):
    """A failure with a message for the user (NaN loss, out of memory, disk full); exit 1, no traceback."""


# ---------------------------------------------------------------------------- the loop

def train(run_dir: Path, resume: bool, allow_changes: bool = False) -> int:
    import torch
    run = setup(run_dir, resume, allow_changes)
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
        trained_tokens = sum(s.trained for mb in group for s in mb)  # the step's tokens, all ranks
        try:
            step_loss = forward_backward(run, group, step, trained_tokens)
        except Exception as e:
            if not is_oom(e):
                raise
            step = recover_from_oom(run, step)
            continue
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
        loss_value = run.gather_sum(step_loss) / max(1, trained_tokens)
        stop_now = run.gather_sum(1.0 if run.stop.requested else 0.0) > 0
        if run.main and (step % tc.log_every_steps == 0 or step == run.total or stop_now):
            log_step(run, step, loss=loss_value, lr=lr, grad_norm=grad_norm, trained_tokens=trained_tokens,
                     tokens=sum(len(s.input_ids) for mb in group for s in mb), seconds=time.time() - t0)
        if (tc.eval_every_steps and step % tc.eval_every_steps == 0) or step == run.total:
            evaluate_and_sample(run, step)
        if (tc.save_every_steps and step % tc.save_every_steps == 0) or step == run.total or stop_now:
            save(run, step)
        if stop_now and step < run.total:
            reason, message = "stopped", f"stopped on request at step {step} of {run.total}"
            break
    finish(run, step, reason, message)
    return 0


def forward_backward(run, group: list, step: int, trained_tokens: int) -> float:
    """This rank's micro-batches of the step, forward and backward; the sum of their token losses."""
    import torch
    tc = run.cfg.train
    mine = group[run.rank * run.layout.accum:(run.rank + 1) * run.layout.accum]
    step_loss = 0.0
    for i, mb in enumerate(mine):
        batch = to_device(collate(mb, run.pad_id, run.cfg.data.packing), run.device)
        if i == 0:
            run.faults.forward(step + 1)
        last = i == len(mine) - 1
        sync = contextlib.nullcontext() if last or run.sharded else run.accelerator.no_sync(run.model)
        # activation_offload: what forward saves for backward waits in CPU RAM, not in GPU memory
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=run.device.type == "cuda")
                   if tc.activation_offload else contextlib.nullcontext())
        with sync, offload:
            loss = loss_sum(run.model, batch, tc.loss_chunk_tokens, run.loaded.head, run.loaded.fused_loss)
            loss = run.faults.loss(step + 1, loss)
            # mean over the step's trained tokens on all ranks (DDP averages gradients over ranks)
            run.accelerator.backward(loss * run.world / max(1, trained_tokens))
        step_loss += float(loss.detach())
    if run.sharded and not run.loaded.sharded_adapters:  # sharded adapters: FSDP reduce-scattered the gradients
        from . import fsdp
        fsdp.average_gradients(run.params, run.world)
    return step_loss


# ---------------------------------------------------------------------------- set-up

@dataclass
class Run:
    """Everything one training process needs, built once by setup()."""
    cfg: object
    run_dir: Path
    accelerator: object
    rank: int
    world: int
    main: bool                      # writes the run directory (each machine's first process)
    sharded: bool
    log: EventLog | None
    stop: "StopFlag"
    faults: "Faults"
    tokenizer: object = None
    load_cfg: object = None         # cfg with model.base where the weights are on this machine (fetch_base)
    pad_id: int = 0
    seqs: list = field(default_factory=list)
    eval_seqs: list = field(default_factory=list)
    sample_example: object = None
    held_out: list = field(default_factory=list)   # the held-out examples, as read (for the final check)
    report: object = None
    layout: "Layout" = None
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


def setup(run_dir: Path, resume: bool, allow_changes: bool) -> Run:
    """Processes, data, model, optimizer and the step to start from."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    cfg = runfile.load(run_dir / RUN_FILE)
    hw = cfg.hardware
    trackers = make_trackers(cfg, run_dir)
    accelerator = Accelerator(cpu=not hw.gpus, log_with=trackers or None)
    world = accelerator.num_processes
    expected = hw.num_processes * hw.num_machines
    if world != expected or (expected > 1 and accelerator.distributed_type == DistributedType.NO):
        raise TrainingFailed(f"asked for {expected} processes ({hw.strategy}) but {world} started "
                             f"({accelerator.distributed_type}); refusing to run {world} separate training(s). "
                             "Start it with `rigtune train RUN_FILE`, which launches every process.")
    main = accelerator.is_local_main_process  # each machine keeps a complete run directory of its own
    run = Run(cfg=cfg, run_dir=run_dir, accelerator=accelerator, rank=accelerator.process_index, world=world,
              main=main, sharded=hw.strategy == "fsdp", log=EventLog(run_dir) if main else None,
              stop=StopFlag(), faults=Faults(os.environ.get("RIGTUNE_FAULT", "")),
              lock=take_lock(run_dir) if main else None)
    run.status(state="loading", step=0, total_steps=0, message="")
    if main:
        C.clean_temp(run_dir)
        for name in runfile.missing_trackers(cfg.train.report_to):
            warn(run, f"report_to lists {name!r}, which is not installed here (pip install {name}); training goes on "
                      "without it")
    if trackers:
        accelerator.init_trackers(cfg.name, config={f"{s}.{k}": v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for s, keys in cfg.to_dict().items() if isinstance(keys, dict)
                                                    for k, v in keys.items()})
    run.tracking = bool(trackers)
    fetch_base(run)
    setup_data(run)
    run.status(state="loading", step=0, total_steps=run.total)
    setup_model(run, resume, allow_changes)
    return run


def fetch_base(run: Run) -> None:
    """A hub model's weights into the Hugging Face cache before anything loads, with `download` events for the
    dashboard (engine.hub: free space checked first, a cut-off download resumes, offline uses the cache). Each
    machine's first process downloads while the others wait; then every process loads the local snapshot."""
    from .. import hub
    from ..modelref import is_local_model
    cfg = run.cfg
    run.load_cfg = cfg
    if is_local_model(cfg.model.base):
        return
    last = {"t": 0.0}

    def progress(p: hub.Progress):
        run.log.write("download", bytes_done=p.bytes_done, bytes_total=p.bytes_total, files_done=p.files_done,
                      files_total=p.files_total, bytes_per_s=round(p.speed), model=cfg.model.base)
        if time.time() - last["t"] >= 10 or p.bytes_done == p.bytes_total:
            last["t"] = time.time()
            print(f"[rigtune] download {cfg.model.base}: {hub.fmt_progress(p)}", flush=True)
    with run.accelerator.local_main_process_first():
        if run.main:
            run.status(state="loading", step=0, total_steps=0, message=f"downloading {cfg.model.base}")
        snap = hub.download(cfg.model.base, cfg.model.revision or None, progress if run.main else None,
                            trust_remote_code=cfg.model.trust_remote_code, every_s=1.0)
    values = cfg.to_dict()
    values["model"]["base"] = str(snap)
    run.load_cfg = runfile.RunConfig(values, path=cfg.path, text=cfg.text)


def setup_data(run: Run) -> None:
    """The same on every rank: tokenized, packed sequences, the eval split, the step count."""
    from .model import load_tokenizer
    cfg, tc = run.cfg, run.cfg.train
    run.tokenizer = load_tokenizer(run.load_cfg)
    run.pad_id = run.tokenizer.pad_token_id
    examples, fmt, files = D.load_examples(cfg.data.path, cfg.data.format)
    train_ex, eval_ex, run.report = D.prepare(cfg, run.tokenizer, examples, fmt)
    run.seqs = D.as_sequences(train_ex, cfg.data.max_seq_len, cfg.data.packing)
    run.eval_seqs = D.as_sequences(eval_ex, cfg.data.max_seq_len, cfg.data.packing)
    run.held_out = D.split(cfg, examples)[1]
    run.sample_example = run.held_out[0] if run.held_out else examples[0]
    run.layout = Layout(run.seqs, tc.micro_batch_size, tc.gradient_accumulation_steps, run.world, tc.seed)
    run.total = tc.max_steps or math.ceil(tc.epochs * run.layout.steps_per_epoch)
    run.warmup = round(tc.warmup_ratio * run.total)
    run.shape, run.data_print = C.shape_of(cfg), C.dataset_fingerprint(files)
    run.data_files = files


def setup_model(run: Run, resume: bool, allow_changes: bool) -> None:
    """The model with its adapters, the optimizer, and (with --resume) the newest verified checkpoint."""
    import torch
    cfg, tc = run.cfg, run.cfg.train
    torch.manual_seed(tc.seed)
    if run.sharded:
        from . import fsdp
        run.loaded = fsdp.load(run.load_cfg, run.device, run.rank, run.world)
    else:
        from .model import load_model
        run.loaded = load_model(run.load_cfg, run.device)
    model = run.loaded.model
    run.params = [p for p in model.parameters() if p.requires_grad]
    run.initial_adapter = {n: local(p).detach().to("cpu", copy=True)  # this rank's shard when sharded
                           for n, p in model.named_parameters() if p.requires_grad}
    run.optimizer = make_optimizer(tc.optimizer, run.params, tc.learning_rate, tc.weight_decay)
    if resume:
        path, run.skipped = C.check_resume(run.run_dir, cfg, run.data_files, allow_changes)
        if path is not None:
            state = load_checkpoint(path, model, run.optimizer, run.params if run.loaded.sharded_adapters else None)
            run.start_step, run.elapsed_before, run.resumed_from = state["step"], state.get("elapsed_s", 0.0), str(path)
    run.model = model
    if not run.sharded:  # DDP (or nothing) wraps the model; FSDP shards were made by engine.torchside.fsdp
        run.model, run.optimizer = run.accelerator.prepare(model, run.optimizer)


def announce(run: Run) -> None:
    """The start event and the first lines of train.log; a warning when the disk looks too small."""
    if not run.main:
        run.status(state="training", step=run.start_step, total_steps=run.total)
        return
    tc, kernels = run.cfg.train, run.loaded.kernels
    for name, reason in run.skipped:
        print(f"[rigtune] skipped checkpoint {name}: {reason}", flush=True)
    shown = "Liger" if kernels == "liger" else f"off ({kernels.partition(': ')[2] or 'kernels = none'})"
    print(f"[rigtune] fused kernels: {shown}", flush=True)
    trainable = sum(p.numel() for p in run.params)
    run.log.write("start", world_size=run.world, strategy=run.cfg.hardware.strategy, model=run.cfg.model.base,
                  trainable_params=trainable, kernels=kernels, activation_offload=tc.activation_offload,
                  total_steps=run.total, resumed_from=run.resumed_from, data=run.report.summary(),
                  format=run.report.format, train_sequences=len(run.seqs), steps_per_epoch=run.layout.steps_per_epoch,
                  start_step=run.start_step, skipped_checkpoints=[f"{n}: {r}" for n, r in run.skipped])
    need = C.estimate_bytes(trainable, tc.keep_checkpoints, tc.optimizer)
    free = shutil.disk_usage(run.run_dir).free
    if free < need:
        warn(run, f"only {free / 2**20:.0f} MiB free in {run.run_dir}; checkpoints and the adapter need about "
                  f"{need / 2**20:.0f} MiB")
    print(f"[rigtune] {run.report.summary()}", flush=True)
    print(f"[rigtune] {run.world} process(es), {len(run.seqs)} sequences, {run.layout.steps_per_epoch} steps/epoch, "
          f"{run.total} steps, starting at {run.start_step}", flush=True)
    run.status(state="training", step=run.start_step, total_steps=run.total)


def mark_load_done(run: Run) -> None:
    """Keep the load's GPU peak (quantizing goes through 16-bit temporaries) apart from training's, so the
    memory event's peak_gib is what the planner predicts: the training steps."""
    import torch
    if run.device.type == "cuda":
        run.load_memory = {"load_peak_gib": round(torch.cuda.max_memory_reserved(run.device) / 2**30, 3)}
        torch.cuda.empty_cache()  # the quantizing temporaries' free blocks go back; the steps start clean
        torch.cuda.reset_peak_memory_stats(run.device)


# ---------------------------------------------------------------------------- recovery

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
    advice = P.suggest(inp, budget)
    if advice is None:
        return "Nothing rigtune can change makes this run lighter on this card; a smaller model or a larger card." + tail
    keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in advice["keys"].items())
    return (f"Try all of: {keys} ({'; '.join(advice['steps'])}; planned {advice['peak_gib']:.2f} GiB, a quarter "
            f"less than this run's {planned:.2f} GiB for what the settings decide)." + tail)


def clip_gradients(run: Run) -> float:
    """Clip to max_grad_norm (when set); the norm before clipping."""
    import torch
    if run.loaded.sharded_adapters:  # gradients are shards: the norm over all ranks, then clip each shard
        norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if run.cfg.train.max_grad_norm > 0:
        return float(run.accelerator.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in run.params if p.grad is not None])))


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


# ---------------------------------------------------------------------------- logging, eval, saving

def log_step(run: Run, step: int, *, loss: float | None = None, lr: float = 0.0, grad_norm: float | None = None,
             tokens: int = 0, trained_tokens: int = 0, seconds: float = 0.0, skipped: bool = False) -> None:
    """The step event (the only place it is written) and status.json."""
    extra = {"skipped": True} if skipped else {}
    run.log.write("step", step=step, epoch=round(step / run.layout.steps_per_epoch, 4),
                  loss=None if loss is None else round(loss, 6), lr=lr,
                  grad_norm=None if grad_norm is None else round(grad_norm, 6), tokens=tokens,
                  trained_tokens=trained_tokens, tokens_per_s=round(tokens / seconds, 1) if tokens and seconds else 0.0,
                  elapsed_s=run.elapsed(), **extra)
    run.status(state="training", step=step, total_steps=run.total)
    if run.tracking and not skipped:
        run.accelerator.log({"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                             "train/tokens_per_s": tokens / seconds if tokens and seconds else 0.0}, step=step)


def make_trackers(cfg, run_dir: Path) -> list:
    """accelerate trackers for [train] report_to, on the job's first process only, for the installed ones:
    TensorBoard writes RUN_DIR/tensorboard/; wandb and mlflow name the run after the run file and follow their
    own settings (WANDB_MODE=offline, MLFLOW_TRACKING_URI)."""
    if os.environ.get("RANK", "0") != "0":
        return []
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker
    make = {"tensorboard": lambda: TensorBoardTracker("tensorboard", str(run_dir)),
            "wandb": lambda: WandBTracker(cfg.name), "mlflow": lambda: MLflowTracker(cfg.name)}
    missing = runfile.missing_trackers(cfg.train.report_to)
    return [make[t]() for t in cfg.train.report_to if t not in missing]


def warn(run: Run, message: str) -> None:
    """A warning event, and the same line in train.log."""
    if run.main:
        run.log.write("warning", message=message)
        print(f"[rigtune] warning: {message}", flush=True)


def evaluate_and_sample(run: Run, step: int) -> None:
    """Held-out loss and one greedy sample (on every rank of a sharded model, which runs forward together).
    At the last step, every held-out example that says what a right answer contains (`expect`) is answered
    by the fine-tune and by the base model (adapter off), and counted."""
    eval_loss, smp, checked = None, None, {}
    if run.main or run.sharded:
        run.status(state="evaluating", step=step, total_steps=run.total)
        loaded = run.loaded
        eval_loss = evaluate(loaded.model, run.eval_seqs, run.cfg, run.pad_id, run.device, loaded.head, loaded.fused_loss)
        checked = check_held_out(run) if step == run.total else {}
        smp = checked.get("samples", [None])[0] or sample(
            loaded.model, run.tokenizer, run.sample_example, run.cfg.train.sample_max_new_tokens, run.device,
            head=loaded.head, fixed_length=run.sharded)
    if run.main:
        run.log.write("eval", step=step, eval_loss=None if eval_loss is None else round(eval_loss, 6), sample=smp,
                      **checked)
        if run.tracking and eval_loss is not None:
            run.accelerator.log({"eval/loss": eval_loss}, step=step)
        if checked:
            print(f"[rigtune] held-out check: {checked['sample_correct']} of {checked['sample_total']} answered "
                  f"right (the base model: {checked['base_correct']})", flush=True)
    run.accelerator.wait_for_everyone()


def check_held_out(run: Run) -> dict:
    """{sample_correct, sample_total, base_correct, samples: [{question, prompt, completion, base_completion,
    expect, correct, base_correct}]} for the held-out examples with `expect`; {} when none has it."""
    loaded, n = run.loaded, run.cfg.train.sample_max_new_tokens
    samples = []
    for ex in (e for e in run.held_out if e.expect):
        tuned = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head, fixed_length=run.sharded)
        base = sample(loaded.model, run.tokenizer, ex, n, run.device, head=loaded.head, fixed_length=run.sharded,
                      adapter=False)
        if tuned is None:
            return {}
        samples.append({**tuned, "base_completion": base["completion"], "expect": ex.expect,
                        "correct": D.answered(tuned["completion"], ex.expect),
                        "base_correct": D.answered(base["completion"], ex.expect)})
    if not samples:
        return {}
    return {"sample_correct": sum(s["correct"] for s in samples), "sample_total": len(samples),
            "base_correct": sum(s["base_correct"] for s in samples), "samples": samples}


def gathered(run: Run) -> tuple:
    """(adapter tensors, optimizer state) gathered whole when the adapters are sharded - every rank takes part -,
    else (None, None): rank 0 reads them from its own whole copy."""
    if not run.loaded.sharded_adapters:
        return None, None
    from . import fsdp
    return fsdp.full_adapter_state(run.loaded.model), fsdp.full_optimizer_state(run.optimizer)


def save(run: Run, step: int) -> None:
    """A checkpoint of `step` (rank 0 writes it; the others wait)."""
    adapter_state, optimizer_state = gathered(run)
    if run.main:
        run.status(state="checkpointing", step=step, total_steps=run.total)
        layout = run.layout
        state = {"step": step, "total_steps": run.total, "epoch": step // layout.steps_per_epoch,
                 "position_in_epoch": step % layout.steps_per_epoch, "steps_per_epoch": layout.steps_per_epoch,
                 "micro_batch_size": layout.mbs, "gradient_accumulation_steps": layout.accum,
                 "seed": run.cfg.train.seed, "world_size": run.world, "rng": "reseeded from (seed, step, rank) each step",
                 "elapsed_s": run.elapsed()}
        path = save_checkpoint(run.run_dir, step, run.loaded.model, run.optimizer, state,
                               run.cfg.train.keep_checkpoints, run.shape, run.data_print, run.faults,
                               adapter_state=adapter_state, optimizer_state=optimizer_state)
        run.log.write("checkpoint", step=step, path=str(path.relative_to(run.run_dir)))
    run.accelerator.wait_for_everyone()


def finish(run: Run, step: int, reason: str, message: str) -> None:
    """Measured memory, the adapter, the end event."""
    adapter_state, _ = gathered(run)
    shards = shard_sizes(run)
    if run.main:
        run.log.write("memory", **measured_memory(run.device), **run.load_memory, **shards)
        save_adapter(run.run_dir, run.loaded.model, adapter_state)
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


# ---------------------------------------------------------------------------- signals, lock, fault injection

class StopFlag:
    """SIGTERM, SIGINT or SIGHUP ask for a graceful stop after the current step. Another signal more than
    two seconds later aborts (torchrun forwards the group's SIGTERM to its workers, so one stop can arrive
    twice within moments)."""

    def __init__(self):
        self.requested_at = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handler)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def _handler(self, signum, frame):
        now = time.monotonic()
        if self.requested_at is None:
            self.requested_at = now
        elif now - self.requested_at > 2.0:
            raise Aborted(f"aborted by a second {signal.Signals(signum).name}")


def take_lock(run_dir: Path):
    """One trainer per run directory: an flock the kernel releases when its holder dies, however it dies."""
    f = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        raise BadInput(f"a trainer (pid {owner}) is already running in {run_dir}; watch it with `rigtune watch "
                       f"{run_dir}` or stop it with `rigtune stop {run_dir}`.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Faults:
    """The one hook through which tests inject the faults only real hardware produces. RIGTUNE_FAULT=
    "oom@3,nan@5,enospc@4,killsave@6" injects a CUDA out-of-memory at step 3's forward, a NaN loss at
    step 5, a full disk while saving step 4 and a SIGKILL halfway through saving step 6, each once.
    Empty in normal use: then every hook does nothing."""

    def __init__(self, spec: str):
        self.pending = set()
        for item in filter(None, spec.split(",")):
            kind, _, step = item.partition("@")
            self.pending.add((kind.strip(), int(step)))

    def _fire(self, kind: str, step: int) -> bool:
        if (kind, step) in self.pending:
            self.pending.discard((kind, step))
            return True
        return False

    def forward(self, step: int) -> None:
        if self._fire("oom", step):
            import torch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def loss(self, step: int, loss):
        return loss * float("nan") if self._fire("nan", step) else loss

    def save(self, step: int) -> None:
        if self._fire("enospc", step):
            import errno
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if self._fire("killsave", step):
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- optimizer, schedule, data layout

def make_optimizer(name: str, params, lr: float, weight_decay: float):
    import torch
    if name == "adamw_torch":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    import bitsandbytes as bnb
    if name == "adamw_8bit":
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise BadInput(f"unknown optimizer {name!r}.", key="train.optimizer")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warmup, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


# ---------------------------------------------------------------------------- entry point

def _quiet_libraries():
    """Keep train.log (and the dashboard's log tail) about the run, not about library deprecations."""
    import logging
    import warnings
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels-community" probes on CPU
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def main(argv=None) -> int:
    _quiet_libraries()
    ap = argparse.ArgumentParser(prog="engine.torchside.trainer", description="rigtune's trainer.")
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--allow-changes", action="store_true")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    main_rank = os.environ.get("LOCAL_RANK", "0") == "0"
    reason = "error"
    try:
        return train(run_dir, args.resume, args.allow_changes)
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
