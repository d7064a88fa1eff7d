"""Everything the training loop needs, built once into a Run record (engine.torchside.runstate): the processes
(accelerate), the base model's weights on this machine, the data (through the training method), the model with
its adapters, the optimizer and its schedule, and the step to start from; then the start event."""
from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from .. import checkpoint as C
from .. import modelfiles, runfile
from ..energy import RunEnergy
from ..errors import BadInput
from ..events import RUN_FILE, EventLog
from .batches import Layout
from .fsdp import local
from .methods import method_for
from .methods.probe import Probe
from .process import Faults, StopFlag, TrainingFailed, take_lock
from .recovery import resume_from_checkpoint
from .runstate import Run, warn


def setup(run_dir: Path, resume: bool, allow_changes: bool, probe: bool = False) -> Run:
    """Processes, data, model, optimizer and the step to start from. `probe`: one of `rigtune probe`'s trials
    (methods/probe.py: random rows, nothing saved)."""
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
              lock=take_lock(run_dir) if main else None, method=Probe() if probe else method_for(cfg), probe=probe)
    run.status(state="loading", step=0, total_steps=0, message="")
    run.energy = RunEnergy.start(cfg, main)  # from here: loading the model is the run's energy too
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


def fetch_base(run: Run) -> None:
    """A hub model's weights into the Hugging Face cache before anything loads, with `download` events for the
    dashboard (engine.hub: free space checked first, a cut-off download resumes, offline uses the cache). Each
    machine's first process downloads while the others wait; then every process loads the local snapshot."""
    from .. import hub
    from ..modelref import is_local_model
    from .weights import loading_from
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
    run.load_cfg = loading_from(cfg, snap)


def setup_data(run: Run) -> None:
    """The same on every rank: the tokenizer, the method's training and eval items, the step count."""
    from .model import load_tokenizer
    cfg, tc = run.cfg, run.cfg.train
    if getattr(run.method, "needs_tokenizer", True):
        run.tokenizer = load_tokenizer(run.load_cfg)
        run.pad_id = run.tokenizer.pad_token_id
    run.method.prepare(run)
    run.layout = Layout(run.seqs, tc.micro_batch_size, tc.gradient_accumulation_steps, run.world, tc.seed)
    run.total = tc.max_steps or math.ceil(tc.epochs * run.layout.steps_per_epoch)
    run.warmup = round(tc.warmup_ratio * run.total)
    run.shape, run.data_print = C.shape_of(cfg), C.dataset_fingerprint(run.data_files)


def setup_model(run: Run, resume: bool, allow_changes: bool) -> None:
    """The model with its adapters, the optimizer, and (with --resume) the newest verified checkpoint."""
    import torch
    tc = run.cfg.train
    torch.manual_seed(tc.seed)
    if run.sharded:
        from . import fsdp
        run.loaded = fsdp.load(run.load_cfg, run.device, run.rank, run.world)
    else:
        from .model import load_model
        run.loaded = load_model(run.load_cfg, run.device)
    model = run.loaded.model
    start = modelfiles.start_adapter(run.cfg)
    if start is not None:  # [model] adapter: training starts from it (and, for DPO, it is the reference)
        from .saving import load_adapter_weights
        load_adapter_weights(model, start / "adapter_model.safetensors", run.loaded.sharded_adapters)
    run.params = [p for p in model.parameters() if p.requires_grad]
    run.initial_adapter = {n: local(p).detach().to("cpu", copy=True)  # this rank's shard when sharded
                           for n, p in model.named_parameters() if p.requires_grad}
    run.optimizer = make_optimizer(tc.optimizer, run.params, tc.learning_rate, tc.weight_decay)
    if resume:
        resume_from_checkpoint(run, allow_changes)
    run.model = model
    if not run.sharded:  # DDP (or nothing) wraps the model; FSDP shards were made by engine.torchside.fsdp
        run.model, run.optimizer = run.accelerator.prepare(model, run.optimizer)


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
                  method=tc.method, adapter=run.cfg.model.adapter or None,
                  total_steps=run.total, resumed_from=run.resumed_from, data=run.report.summary(),
                  format=run.report.format, train_sequences=len(run.seqs), steps_per_epoch=run.layout.steps_per_epoch,
                  start_step=run.start_step, skipped_checkpoints=[f"{n}: {r}" for n, r in run.skipped],
                  **run.energy.start_fields())
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
