"""The training loop, run by `accelerate launch -m engine.trainer RUN_DIR [--resume]` (engine.launch builds
that command). Read it top to bottom: set-up, then one optimizer step per loop turn, then the end.

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
from pathlib import Path

from . import checkpoint as C
from . import data as D
from . import runfile
from .errors import BadInput
from .events import EventLog, write_status


class Aborted(Exception):
    """A second stop signal: leave at once (the last complete checkpoint stays as it is)."""


class TrainingFailed(Exception):
    """A failure with a message for the user (NaN loss, out of memory, disk full); exit 1, no traceback."""


# ---------------------------------------------------------------------------- signals, lock, fault seam

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
    f = open(run_dir / ".lock", "a+")
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
    """Test seam: RIGTUNE_FAULT="oom@3,nan@5,enospc@4,killsave@6" injects a CUDA out-of-memory at step 3's
    forward, a NaN loss at step 5, a full disk when saving step 4 and a SIGKILL halfway through saving step 6
    - each once. Empty in normal use."""

    def __init__(self, spec: str):
        self.pending = {}
        for item in filter(None, spec.split(",")):
            kind, _, step = item.partition("@")
            self.pending[(kind.strip(), int(step))] = True

    def fire(self, kind: str, step: int) -> bool:
        return self.pending.pop((kind, step), False)

    def __call__(self, where: str, step: int):
        if where == "save" and self.fire("enospc", step):
            import errno
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if where == "save" and self.fire("killsave", step):
            os.kill(os.getpid(), signal.SIGKILL)


def is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------- optimizer and schedule

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


# ---------------------------------------------------------------------------- loss, eval, sample

def loss_sum(model, batch, chunk_tokens: int = 0):
    """Sum of the token cross-entropies over trained tokens (labels shifted by one), in fp32.

    With chunk_tokens, the model returns hidden states (its lm_head is held aside, engine.model.detach_head)
    and the loss is computed only at trained positions, chunk by chunk, each chunk's logits recomputed in
    backward instead of kept: identical loss and gradients, a fraction of the memory and of the lm_head work."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    from .model import output_head
    from .attention import NAME as PACKED
    labels = batch.pop("labels")
    segments = batch.pop("segments", None)  # where each packed example starts, from collate
    inner = model.module if hasattr(model, "module") else model
    if segments is not None and getattr(inner.config, "_attn_implementation", None) == PACKED:
        batch["rigtune_segments"] = segments
    out = model(**batch, use_cache=False).logits
    target = labels[:, 1:]
    head = output_head(inner)
    if not chunk_tokens or head is None:
        logits = out[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=D.IGNORE,
                               reduction="sum")
    keep = target != D.IGNORE
    hidden, y = out[:, :-1][keep], target[keep]
    fused = getattr(inner, "rigtune_fused_loss", None)
    if fused is not None:  # Liger's fused linear cross-entropy: the same sum, chunked inside one kernel
        return fused(head.weight, hidden, y).float()
    total = out.new_zeros((), dtype=torch.float32)

    def piece(h, t):
        return F.cross_entropy(head(h).float(), t, reduction="sum")
    for i in range(0, y.numel(), chunk_tokens):
        total = total + checkpoint(piece, hidden[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
    return total


def evaluate(model, eval_seqs, cfg, pad_id, device) -> float | None:
    import torch
    if not eval_seqs:
        return None
    model.eval()
    total, count = 0.0, 0
    mbs = cfg.train.micro_batch_size
    with torch.no_grad():
        for i in range(0, len(eval_seqs), mbs):
            chunk = eval_seqs[i:i + mbs]
            batch = D.to_device(D.collate(chunk, pad_id, cfg.data.packing), device)
            total += float(loss_sum(model, batch, cfg.train.loss_chunk_tokens))
            count += sum(s.trained for s in chunk)
    model.train()
    return total / max(1, count)


def sample(model, tokenizer, example, max_new_tokens: int, device, fixed_length: bool = False) -> dict | None:
    """Greedy generation for one held-out prompt, to watch the model learn. With fixed_length every rank
    runs the same number of forward passes (a sharded model needs all ranks in each one); the text is cut
    at the end-of-sequence token afterwards."""
    import torch
    if max_new_tokens <= 0 or example is None:
        return None
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"][:16]
        prompt = tokenizer.decode(ids)
    else:
        first = next(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
        prompt_msgs = [{"role": m["role"], "content": m["content"]} for m in example.messages[:first]]
        prompt = tokenizer.apply_chat_template(prompt_msgs, tools=example.tools, tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    from .model import full_head
    model.eval()
    with torch.no_grad(), full_head(model):
        out = model.generate(input_ids=torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens if fixed_length else None, do_sample=False,
                             use_cache=True, pad_token_id=tokenizer.pad_token_id)
    model.train()
    new = out[0][len(ids):].tolist()
    if tokenizer.eos_token_id in new:
        new = new[:new.index(tokenizer.eos_token_id)]
    completion = tokenizer.decode(new, skip_special_tokens=True)
    return {"prompt": prompt, "completion": completion}


def measured_memory(device) -> dict:
    """This process's peaks: GPU memory reserved by the caching allocator (what the planner predicts) and RSS."""
    import resource

    import torch
    out = {"device": str(device), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 3)
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def oom_advice(cfg) -> str:
    t, d = cfg.train, cfg.data
    tips = []
    if t.micro_batch_size > 1:
        tips.append(f"micro_batch_size = {t.micro_batch_size // 2} with gradient_accumulation_steps = "
                    f"{t.gradient_accumulation_steps * 2} (same effective batch)")
    if not t.gradient_checkpointing:
        tips.append("gradient_checkpointing = true")
    if t.optimizer != "paged_adamw_8bit":
        tips.append('optimizer = "paged_adamw_8bit"')
    tips.append(f"a shorter max_seq_len than {d.max_seq_len}")
    if cfg.hardware.strategy == "fsdp" and not cfg.hardware.cpu_offload:
        tips.append("cpu_offload = true")
    return "; ".join(tips) + ". `rigtune plan RUN_FILE` shows what fits; [train] oom_fallback = true applies the first one by itself."


# ---------------------------------------------------------------------------- the run

def train(run_dir: Path, resume: bool, allow_changes: bool = False) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from .model import load_model, load_tokenizer

    cfg = runfile.load(run_dir / "run.toml")
    hw, tc = cfg.hardware, cfg.train
    accelerator = Accelerator(cpu=not hw.gpus)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_local_main_process  # each machine keeps a complete run directory of its own
    sharded = hw.strategy == "fsdp"
    expected = hw.num_processes * hw.num_machines
    if world != expected or (expected > 1 and accelerator.distributed_type == DistributedType.NO):
        raise TrainingFailed(f"asked for {expected} processes ({hw.strategy}) but {world} started "
                             f"({accelerator.distributed_type}); refusing to run {world} separate training(s). "
                             "Start it with `rigtune train RUN_FILE`, which launches every process.")
    lock = take_lock(run_dir) if main else None  # noqa: F841 - held for the life of the process
    log = EventLog(run_dir) if main else None
    stop = StopFlag()
    faults = Faults(os.environ.get("RIGTUNE_FAULT", ""))
    status = (lambda **kw: write_status(run_dir, pid=os.getpid(), pgid=os.getpgid(0), **kw)) if main else (lambda **kw: None)
    status(state="loading", step=0, total_steps=0, message="")
    if main:
        C.clean_temp(run_dir)

    # data: the same on every rank
    tokenizer = load_tokenizer(cfg)
    examples, fmt, files = D.load_examples(cfg.data.path, cfg.data.format)
    train_ex, eval_ex, report = D.prepare(cfg, tokenizer, examples, fmt)
    seqs = D.as_sequences(train_ex, cfg.data.max_seq_len, cfg.data.packing)
    eval_seqs = D.as_sequences(eval_ex, cfg.data.max_seq_len, cfg.data.packing)
    _, eval_idx = D.split_indices(len(examples), cfg.data.eval_fraction, tc.seed)
    sample_example = examples[eval_idx[0]] if eval_idx else examples[0]
    layout = Layout(seqs, tc.micro_batch_size, tc.gradient_accumulation_steps, world, tc.seed)
    total = tc.max_steps or math.ceil(tc.epochs * layout.steps_per_epoch)
    warmup = round(tc.warmup_ratio * total)
    shape, data_print = C.shape_of(cfg), C.dataset_fingerprint(files)

    # model, optimizer, and where to start
    status(state="loading", step=0, total_steps=total)
    torch.manual_seed(tc.seed)
    if sharded:
        from . import fsdp
        model = fsdp.load(cfg, accelerator.device, rank, world)
    else:
        model = load_model(cfg, accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    initial_adapter = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    optimizer = make_optimizer(tc.optimizer, params, tc.learning_rate, tc.weight_decay)
    start_step, elapsed_before, resumed_from, skipped = 0, 0.0, None, []
    if resume:
        path, skipped = C.check_resume(run_dir, cfg, files, allow_changes)
        if path is not None:
            state = C.load(path, model, optimizer)
            start_step, elapsed_before, resumed_from = state["step"], state.get("elapsed_s", 0.0), str(path)
    if not sharded:  # DDP (or nothing) wraps the model; FSDP shards were made by engine.fsdp
        model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    trainable = sum(p.numel() for p in params)
    if main:
        for name, reason in skipped:
            print(f"[rigtune] skipped checkpoint {name}: {reason}", flush=True)
        kernels = getattr(unwrapped, "rigtune_kernels", "none")
        shown = "Liger" if kernels == "liger" else f"off ({kernels.partition(': ')[2] or 'kernels = none'})"
        print(f"[rigtune] fused kernels: {shown}", flush=True)
        log.write("start", world_size=world, strategy=hw.strategy, model=cfg.model.base, trainable_params=trainable,
                  kernels=kernels, activation_offload=tc.activation_offload,
                  total_steps=total, resumed_from=resumed_from, data=report.summary(), format=report.format,
                  train_sequences=len(seqs), steps_per_epoch=layout.steps_per_epoch, start_step=start_step,
                  skipped_checkpoints=[f"{n}: {r}" for n, r in skipped])
        need = C.estimate_bytes(trainable, tc.keep_checkpoints, tc.optimizer)
        free = shutil.disk_usage(run_dir).free
        if free < need:
            msg = (f"only {free / 2**20:.0f} MiB free in {run_dir}; checkpoints and the adapter need about "
                   f"{need / 2**20:.0f} MiB")
            log.write("warning", message=msg)
            print(f"[rigtune] warning: {msg}", flush=True)
        print(f"[rigtune] {report.summary()}", flush=True)
        print(f"[rigtune] {world} process(es), {len(seqs)} sequences, {layout.steps_per_epoch} steps/epoch, "
              f"{total} steps, starting at {start_step}", flush=True)
    status(state="training", step=start_step, total_steps=total)

    pad_id = tokenizer.pad_token_id

    def gather_sum(x: float) -> float:
        if world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=accelerator.device)
        return float(accelerator.reduce(t, reduction="sum"))

    def save(step):
        status(state="checkpointing", step=step, total_steps=total)
        state = {"step": step, "total_steps": total, "epoch": step // layout.steps_per_epoch,
                 "position_in_epoch": step % layout.steps_per_epoch, "steps_per_epoch": layout.steps_per_epoch,
                 "micro_batch_size": layout.mbs, "gradient_accumulation_steps": layout.accum,
                 "seed": tc.seed, "world_size": world, "rng": "reseeded from (seed, step, rank) each step",
                 "elapsed_s": round(elapsed_before + time.time() - t_start, 2)}
        path = C.save(run_dir, step, unwrapped, optimizer, state, tc.keep_checkpoints, shape, data_print, faults)
        log.write("checkpoint", step=step, path=str(path.relative_to(run_dir)))

    t_start = time.time()
    reason, message, step, bad_steps = "finished", "", start_step, 0
    model.train()
    while step < total:
        t0 = time.time()
        torch.manual_seed((tc.seed * 1_000_003 + step * 1009 + rank) % 2**63)
        group = layout.step_batches(step)
        trained_tokens = sum(s.trained for mb in group for s in mb)  # the step's tokens, all ranks
        mine = group[rank * layout.accum:(rank + 1) * layout.accum]
        step_loss = 0.0
        try:
            for i, mb in enumerate(mine):
                batch = D.to_device(D.collate(mb, pad_id, cfg.data.packing), accelerator.device)
                if faults.fire("oom", step + 1) and i == 0:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
                last = i == len(mine) - 1
                sync = contextlib.nullcontext() if last or sharded else accelerator.no_sync(model)
                # activation_offload: what forward saves for backward waits in CPU RAM, not in GPU memory
                offload = (torch.autograd.graph.save_on_cpu(pin_memory=accelerator.device.type == "cuda")
                           if tc.activation_offload else contextlib.nullcontext())
                with sync, offload:
                    loss = loss_sum(model, batch, tc.loss_chunk_tokens)
                    if faults.fire("nan", step + 1):
                        loss = loss * float("nan")
                    # mean over the step's trained tokens on all ranks (DDP averages gradients over ranks)
                    accelerator.backward(loss * world / max(1, trained_tokens))
                step_loss += float(loss.detach())
            if sharded:
                fsdp.average_gradients(params, world)
        except Exception as e:
            if not is_oom(e):
                raise
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not (tc.oom_fallback and layout.mbs > 1):
                raise TrainingFailed(f"out of memory at step {step + 1} (micro-batch {layout.mbs}, max_seq_len "
                                     f"{cfg.data.max_seq_len}). Try: {oom_advice(cfg)}") from None
            # fallback: half the micro-batch, twice the accumulation, from the last good checkpoint
            old = (layout.mbs, layout.accum)
            layout = Layout(seqs, layout.mbs // 2, layout.accum * 2, world, tc.seed)
            path, _ = C.newest_verified(run_dir)
            if path is not None:
                state = C.load(path, unwrapped, optimizer)
                step = state["step"]
            else:
                with torch.no_grad():
                    for n, p in unwrapped.named_parameters():
                        if n in initial_adapter:
                            p.copy_(initial_adapter[n].to(p.device))
                optimizer.state.clear()
                step = 0
            if main:
                log.write("oom_fallback", step=step, micro_batch_size=[old[0], layout.mbs],
                          gradient_accumulation_steps=[old[1], layout.accum], resumed_from=str(path) if path else None)
                values = cfg.to_dict()
                values["train"].update(micro_batch_size=layout.mbs, gradient_accumulation_steps=layout.accum)
                history = (f"history: out of memory at micro_batch_size {old[0]}; rigtune changed it to {layout.mbs} "
                           f"with gradient_accumulation_steps {layout.accum} ({time.strftime('%Y-%m-%d %H:%M')})")
                runfile.save(values, run_dir / "run.toml", header=history)
                print(f"[rigtune] {history}; resuming from step {step}", flush=True)
            continue

        bad = not math.isfinite(step_loss)
        if tc.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        bad = bad or not math.isfinite(grad_norm)
        if gather_sum(1.0 if bad else 0.0) > 0:  # every rank skips the update together
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            if bad_steps >= tc.max_bad_steps:
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                raise TrainingFailed(
                    f"the {what} became NaN/inf at step {step + 1} ({bad_steps} bad step(s)); the last checkpoint "
                    f"is kept and this state is not saved. Lower learning_rate (now {tc.learning_rate:g}, try "
                    f"{tc.learning_rate / 4:g}) or keep max_grad_norm on, then resume.")
            step += 1
            if main:
                log.write("step", step=step, epoch=round(step / layout.steps_per_epoch, 4), loss=None, skipped=True,
                          lr=0.0, grad_norm=None, tokens=0, trained_tokens=0, tokens_per_s=0.0,
                          elapsed_s=round(elapsed_before + time.time() - t_start, 2))
            continue
        lr = tc.learning_rate * lr_factor(step, total, warmup, tc.lr_scheduler)
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = gather_sum(step_loss) / max(1, trained_tokens)
        step_tokens = sum(len(s.input_ids) for mb in group for s in mb)
        stop_now = gather_sum(1.0 if stop.requested else 0.0) > 0
        dt = time.time() - t0

        if main and (step % tc.log_every_steps == 0 or step == total or stop_now):
            log.write("step", step=step, epoch=round(step / layout.steps_per_epoch, 4), loss=round(loss_value, 6), lr=lr,
                      grad_norm=round(grad_norm, 6), tokens=step_tokens, trained_tokens=trained_tokens,
                      tokens_per_s=round(step_tokens / max(dt, 1e-9), 1),
                      elapsed_s=round(elapsed_before + time.time() - t_start, 2))
            status(state="training", step=step, total_steps=total)
        if (tc.eval_every_steps and step % tc.eval_every_steps == 0) or step == total:
            if main or sharded:  # a sharded model runs forward on every rank together
                status(state="evaluating", step=step, total_steps=total)
                eval_loss = evaluate(unwrapped, eval_seqs, cfg, pad_id, accelerator.device)
                smp = sample(unwrapped, tokenizer, sample_example, tc.sample_max_new_tokens, accelerator.device,
                             fixed_length=sharded)
            if main:
                log.write("eval", step=step, eval_loss=None if eval_loss is None else round(eval_loss, 6), sample=smp)
            accelerator.wait_for_everyone()
        if (tc.save_every_steps and step % tc.save_every_steps == 0) or step == total or stop_now:
            if main:
                save(step)
            accelerator.wait_for_everyone()
        if stop_now and step < total:
            reason, message = "stopped", f"stopped on request at step {step} of {total}"
            break

    if main:
        log.write("memory", **measured_memory(accelerator.device))
        save_adapter(run_dir, unwrapped)
        log.write("end", sync=True, step=step, reason=reason, message=message or f"finished {total} steps")
        status(state=reason, step=step, total_steps=total)
        print(f"[rigtune] {reason} at step {step}; adapter in {run_dir / 'adapter'}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def save_adapter(run_dir: Path, model) -> None:
    """adapter/, replaced atomically: written next to it, then renamed."""
    import errno
    adapter, tmp = run_dir / "adapter", run_dir / ".tmp-adapter"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise C.DiskFull(f"disk full while writing the adapter in {run_dir}; the last checkpoint is kept. "
                             "Free some space, then resume with --resume.") from None
        raise
    old = run_dir / ".old-adapter"
    shutil.rmtree(old, ignore_errors=True)
    if adapter.exists():
        os.rename(adapter, old)
    os.rename(tmp, adapter)
    shutil.rmtree(old, ignore_errors=True)


def _quiet_libraries():
    """Keep train.log (and the dashboard's log tail) about the run, not about library deprecations."""
    import logging
    import warnings
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels-community" probes on CPU
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*autograd kernel was not registered.*")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def main(argv=None) -> int:
    _quiet_libraries()
    ap = argparse.ArgumentParser(prog="engine.trainer", description="rigtune's trainer (run under accelerate).")
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
        traceback.print_exc()
        code, msg = 1, f"{type(e).__name__}: {e}"
        if "peer" in msg.lower() or "remote worker" in msg.lower():  # gloo/NCCL: another rank died first
            msg = ("another training process failed first (its '[rigtune] rank N' line in train.log says why); "
                   f"this one then lost its connection: {msg[:200]}")
    if not main_rank:
        print(f"[rigtune] rank {os.environ.get('RANK', '?')} {reason}: {msg}", file=sys.stderr, flush=True)
    if main_rank:
        print(f"[rigtune] {reason}: {msg}", file=sys.stderr, flush=True)
        step = None
        with contextlib.suppress(Exception):
            from .events import read_status_raw
            step = read_status_raw(run_dir).get("step")
        EventLog(run_dir).write("end", sync=True, step=step, reason=reason, message=msg, exit_code=code)
        write_status(run_dir, pid=os.getpid(), pgid=os.getpgid(0), state=reason, message=msg)
    return code


if __name__ == "__main__":
    sys.exit(main())
