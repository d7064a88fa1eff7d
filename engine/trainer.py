"""The training loop, run by `accelerate launch -m engine.trainer RUN_DIR [--resume]` (engine.launch builds
that command). Read it top to bottom: set-up, then one optimizer step per loop turn, then the end.

Only rank 0 writes the event stream, status.json, checkpoints and the adapter. Every rank runs the same
steps: step s uses micro-batches s*W*A ... of the epoch's order (W ranks, A accumulation steps), so the data
position and the RNG (reseeded from seed, step and rank at each step) follow from the step alone. That is
what makes --resume exact.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from . import data as D
from . import runfile
from .errors import BadInput
from .events import EventLog, write_status

CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------------------- stop requests

class StopFlag:
    """SIGTERM/SIGINT ask for a graceful stop after the current step. A hang-up is ignored: the run goes on."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _handler(self, signum, frame):
        self.requested = True


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


# ---------------------------------------------------------------------------- checkpoints

def _flatten_optimizer(state: dict):
    """Optimizer state as (tensors for safetensors, the rest as JSON with {"__tensor__": key} in their
    place): nothing pickled, whatever the optimizer keeps (bitsandbytes keeps tensors in odd places)."""
    import torch
    tensors = {}

    def walk(obj, path):
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().to("cpu").contiguous().clone()
            return {"__tensor__": path}
        if isinstance(obj, dict):
            return {"__dict__": [[k, walk(v, f"{path}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, "s")


def _unflatten_optimizer(tensors: dict, meta):
    if isinstance(meta, dict) and "__tensor__" in meta:
        return tensors[meta["__tensor__"]]
    if isinstance(meta, dict) and "__dict__" in meta:  # keeps integer keys integers
        return {k: _unflatten_optimizer(tensors, v) for k, v in meta["__dict__"]}
    if isinstance(meta, list):
        return [_unflatten_optimizer(tensors, v) for v in meta]
    return meta


def _fsync_dir(path: Path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int) -> Path:
    """Write checkpoints/step-NNNNNN complete or not at all: into a temp dir, fsync, then rename."""
    from safetensors.torch import save_file
    root = run_dir / CHECKPOINTS
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # the same step saved before a crash: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir) -> list:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "trainer_state.json").is_file())


def load_checkpoint(path: Path, model, optimizer) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    meta = json.loads((path / "optimizer.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta))
    return json.loads((path / "trainer_state.json").read_text())


# ---------------------------------------------------------------------------- loss, eval, sample

def loss_sum(model, batch):
    """Sum of the token cross-entropies over trained tokens (labels shifted by one), in fp32."""
    import torch
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=D.IGNORE, reduction="sum")


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
            batch = {k: v.to(device) for k, v in D.collate(chunk, pad_id, cfg.data.packing).items()}
            total += float(loss_sum(model, batch))
            count += sum(s.trained for s in chunk)
    model.train()
    return total / max(1, count)


def sample(model, tokenizer, example, max_new_tokens: int, device) -> dict | None:
    """Greedy generation for one held-out prompt, to watch the model learn."""
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
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
                             do_sample=False, use_cache=True, pad_token_id=tokenizer.pad_token_id)
    model.train()
    completion = tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)
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


# ---------------------------------------------------------------------------- the run

def train(run_dir: Path, resume: bool) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from .model import load_model, load_tokenizer

    cfg = runfile.load(run_dir / "run.toml")
    hw, tc = cfg.hardware, cfg.train
    accelerator = Accelerator(cpu=not hw.gpus)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    expected = hw.num_processes * hw.num_machines
    if world != expected or (expected > 1 and accelerator.distributed_type == DistributedType.NO):
        raise RuntimeError(f"asked for {expected} processes ({hw.strategy}) but accelerate started "
                           f"{world} as {accelerator.distributed_type}; refusing to run {world} separate trainings.")
    log = EventLog(run_dir) if main else None
    stop = StopFlag()
    status = (lambda **kw: write_status(run_dir, pid=os.getpid(), pgid=os.getpgid(0), **kw)) if main else (lambda **kw: None)
    status(state="loading", step=0, total_steps=0)

    # data: the same on every rank
    tokenizer = load_tokenizer(cfg)
    examples, fmt, _ = D.load_examples(cfg.data.path, cfg.data.format)
    train_ex, eval_ex, report = D.prepare(cfg, tokenizer, examples, fmt)
    seqs = D.as_sequences(train_ex, cfg.data.max_seq_len, cfg.data.packing)
    eval_seqs = D.as_sequences(eval_ex, cfg.data.max_seq_len, cfg.data.packing)
    _, eval_idx = D.split_indices(len(examples), cfg.data.eval_fraction, tc.seed)
    sample_example = examples[eval_idx[0]] if eval_idx else examples[0]
    mbs, accum = tc.micro_batch_size, tc.gradient_accumulation_steps
    n_micro = math.ceil(len(seqs) / mbs)
    per_step = world * accum
    steps_per_epoch = max(1, n_micro // per_step)
    total = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    warmup = round(tc.warmup_ratio * total)

    # model, optimizer, schedule
    status(state="loading", step=0, total_steps=total)
    torch.manual_seed(tc.seed)
    model = load_model(cfg, accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(tc.optimizer, params, tc.learning_rate, tc.weight_decay)
    start_step, elapsed_before, resumed_from = 0, 0.0, None
    if resume:
        ckpts = list_checkpoints(run_dir)
        if ckpts:
            state = load_checkpoint(ckpts[-1], model, optimizer)
            start_step, elapsed_before, resumed_from = state["step"], state.get("elapsed_s", 0.0), str(ckpts[-1])
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    trainable = sum(p.numel() for p in params)
    if main:
        log.write("start", world_size=world, strategy=hw.strategy, model=cfg.model.base, trainable_params=trainable,
                  total_steps=total, resumed_from=resumed_from, data=report.summary(), format=report.format,
                  train_sequences=len(seqs), steps_per_epoch=steps_per_epoch, start_step=start_step)
        print(f"[rigtune] {report.summary()}", flush=True)
        print(f"[rigtune] {world} process(es), {len(seqs)} sequences, {steps_per_epoch} steps/epoch, "
              f"{total} steps, starting at {start_step}", flush=True)
    status(state="training", step=start_step, total_steps=total)

    pad_id = tokenizer.pad_token_id
    order_cache: dict = {}

    def micro_batches(step):
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in order_cache:
            g = torch.Generator().manual_seed(tc.seed + epoch)
            order_cache.clear()
            order_cache[epoch] = torch.randperm(len(seqs), generator=g).tolist()
        order = order_cache[epoch]
        out = []
        for k in range(per_step):
            m = (pos * per_step + k) % n_micro
            out.append([seqs[i] for i in order[m * mbs:(m + 1) * mbs]])
        return out

    def gather_sum(x: float) -> float:
        if world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=accelerator.device)
        return float(accelerator.reduce(t, reduction="sum"))

    t_start = time.time()
    reason, message, step = "finished", "", start_step
    model.train()
    while step < total:
        t0 = time.time()
        torch.manual_seed((tc.seed * 1_000_003 + step * 1009 + rank) % 2**63)
        group = micro_batches(step)
        trained_tokens = sum(s.trained for mb in group for s in mb)  # the step's tokens, all ranks
        mine = group[rank * accum:(rank + 1) * accum]
        step_loss = 0.0
        for i, mb in enumerate(mine):
            batch = {k: v.to(accelerator.device) for k, v in D.collate(mb, pad_id, cfg.data.packing).items()}
            sync = accelerator.no_sync(model) if i < len(mine) - 1 else contextlib.nullcontext()
            with sync:
                loss = loss_sum(model, batch)
                # mean over the step's trained tokens on all ranks (DDP averages gradients over ranks)
                accelerator.backward(loss * world / max(1, trained_tokens))
            step_loss += float(loss.detach())
        if tc.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, tc.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
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
            log.write("step", step=step, epoch=round(step / steps_per_epoch, 4), loss=round(loss_value, 6), lr=lr,
                      grad_norm=round(grad_norm, 6), tokens=step_tokens, trained_tokens=trained_tokens,
                      tokens_per_s=round(step_tokens / max(dt, 1e-9), 1),
                      elapsed_s=round(elapsed_before + time.time() - t_start, 2))
            status(state="training", step=step, total_steps=total)
        if (tc.eval_every_steps and step % tc.eval_every_steps == 0) or step == total:
            if main:
                status(state="evaluating", step=step, total_steps=total)
                eval_loss = evaluate(unwrapped, eval_seqs, cfg, pad_id, accelerator.device)
                smp = sample(unwrapped, tokenizer, sample_example, tc.sample_max_new_tokens, accelerator.device)
                log.write("eval", step=step, eval_loss=None if eval_loss is None else round(eval_loss, 6), sample=smp)
            accelerator.wait_for_everyone()
        if (tc.save_every_steps and step % tc.save_every_steps == 0) or step == total or stop_now:
            if main:
                status(state="checkpointing", step=step, total_steps=total)
                state = {"step": step, "total_steps": total, "epoch": step // steps_per_epoch,
                         "position_in_epoch": step % steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                         "seed": tc.seed, "world_size": world, "rng": "reseeded from (seed, step, rank) each step",
                         "elapsed_s": round(elapsed_before + time.time() - t_start, 2)}
                path = save_checkpoint(run_dir, step, unwrapped, optimizer, state, tc.keep_checkpoints)
                log.write("checkpoint", step=step, path=str(path.relative_to(run_dir)))
            accelerator.wait_for_everyone()
        if stop_now and step < total:
            reason, message = "stopped", f"stopped on request at step {step} of {total}"
            break

    if main:
        log.write("memory", **measured_memory(accelerator.device))
        adapter = run_dir / "adapter"
        tmp = run_dir / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(adapter, ignore_errors=True)
        os.rename(tmp, adapter)
        log.write("end", sync=True, step=step, reason=reason, message=message or f"finished {total} steps")
        status(state=reason, step=step, total_steps=total)
        print(f"[rigtune] {reason} at step {step}; adapter in {adapter}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


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
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        return train(run_dir, args.resume)
    except BadInput as e:
        code, msg = 2, str(e)
    except Exception as e:  # a real failure: traceback into train.log, one line into the event stream
        traceback.print_exc()
        code, msg = 1, f"{type(e).__name__}: {e}"
    if main_rank:
        print(f"[rigtune] error: {msg}", file=sys.stderr, flush=True)
        log = EventLog(run_dir)
        log.write("end", sync=True, step=None, reason="error", message=msg, exit_code=code)
        write_status(run_dir, pid=os.getpid(), pgid=os.getpgid(0), state="error", message=msg)
    return code


if __name__ == "__main__":
    sys.exit(main())
