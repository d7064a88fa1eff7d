"""What a watcher knows about a run, built from its run directory alone and kept up to date incrementally:
`poll()` reads only the bytes metrics.jsonl gained since the last call (and the small status.json), so a
dashboard can call it every half second for free. The histories are compact arrays; plots downsample them
to their width (`downsample`), so a run of a million steps draws as fast as one of a hundred.
"""
from __future__ import annotations

import bisect
import os
from array import array
from collections import deque
from dataclasses import dataclass
from pathlib import Path

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    from json import loads as _loads

from .events import FINAL_STATES, METRICS, STATUS, TRAIN_LOG, read_status

CHUNK = 4 * 1024 * 1024
SPARSE_ABOVE = 32 * 1024 * 1024   # attach to bigger streams by sampling their history, then read the tail
TAIL_BYTES = 8 * 1024 * 1024
SAMPLES = 4096


@dataclass
class Checkpoint:
    step: int
    path: str
    time: float


class RunView:
    def __init__(self, run_dir, log_lines: int = 200, read_log: bool = True):
        self.run_dir = Path(run_dir)
        self.offset = 0
        self.log_offset = 0
        self.log_tail: deque = deque(maxlen=log_lines)
        self._log_partial = b""
        self.steps, self.losses, self.smooth = array("d"), array("d"), array("d")
        self.smoothing = 0.05              # EMA weight of a new loss in the smoothed curve
        self.log_lines_total = 0           # lines ever added to log_tail (to append only what is new)
        self.lrs, self.grad_norms = array("d"), array("d")
        self.eval_steps, self.eval_losses = array("d"), array("d")
        self.checkpoints: list = []
        self.sample: dict | None = None
        self.sample_step: int | None = None
        self.held_out: dict | None = None  # the final held-out check: correct, total, base_correct, samples, step
        self.start: dict = {}
        self.download: dict | None = None  # the latest `download` event (the base model's weights, before start)
        self.end: dict | None = None
        self.status: dict = {}
        self.total_steps = 0
        self.events = 0
        self.tokens_per_s = 0.0          # latest step
        self.tokens_per_s_avg = 0.0      # smoothed (EMA), what the ETA uses
        self.sec_per_step = 0.0          # smoothed
        self.tokens_seen = 0
        self.epoch = 0.0
        self.elapsed_s = 0.0
        self._last_step_time = None
        self.sampled_until = 0           # steps up to here are an evenly spaced sample (big streams)
        self.energy: dict = {}           # the start event's energy_* fields: how energy is measured, or why not
        self.energy_kwh = self.cost_usd = None  # so far: the latest step event that carried them
        self.final: dict | None = None   # the final event: energy, cost and the cloud estimate
        self.preference: dict = {}       # DPO/ORPO: the latest step's reward_margin, reward_accuracy and the latest
                                         # eval's pref_accuracy (base_pref_accuracy at the end)
        self.rewards = array("d")        # GRPO: each step's reward_mean (beside self.steps)
        self.eval_reward_steps, self.eval_rewards = array("d"), array("d")  # GRPO: held-out reward_mean
        self.completions: dict | None = None  # GRPO: the latest `completions` event (a prompt's sampled answers)
        self.read_log = read_log

    # ---------------------------------------------------------------------- reading
    def poll(self) -> bool:
        """Take in whatever the run directory gained. True if anything changed."""
        changed = self._read_metrics()
        status = read_status(self.run_dir)
        if status != self.status:
            self.status, changed = status, True
        return (self.read_log and self._read_log()) or changed

    @staticmethod
    def _grown(path, offset: int) -> int | None:
        """The file's size if it grew past `offset`, else None (also when it does not exist yet)."""
        try:
            size = os.path.getsize(path)
        except OSError:  # not there yet (the trainer has not started writing it)
            return None
        return size if size > offset else None

    def _read_metrics(self) -> bool:
        path = self.run_dir / METRICS
        size = self._grown(path, self.offset)
        if size is None:
            return False
        if self.offset == 0 and size > SPARSE_ABOVE:
            self._sparse_attach(path, size)
        changed = False
        with open(path, "rb") as f:
            f.seek(self.offset)
            while self.offset < size:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                end = chunk.rfind(b"\n") + 1
                if end == 0:  # no complete line yet (or one longer than a chunk: read it whole)
                    if len(chunk) < CHUNK:
                        break
                    chunk += f.readline()
                    end = len(chunk)
                for line in chunk[:end].split(b"\n"):
                    if line:
                        try:
                            ev = _loads(line)
                        except ValueError:
                            continue  # the torn tail of a writer killed mid-line
                        self._apply(ev)
                        changed = True
                self.offset += end
                f.seek(self.offset)
        return changed

    def _sparse_attach(self, path, size):
        """A big stream: the first start event, an evenly spaced sample of the history (for the plots), then
        the last TAIL_BYTES are read in full by the normal path. Cost depends on SAMPLES, not on the size."""
        tail = size - TAIL_BYTES
        with open(path, "rb") as f:
            head = f.read(65536).split(b"\n")
            for line in head[:-1]:
                try:
                    ev = _loads(line)
                except ValueError:  # the head's last line, cut by the read: the start event is on the first
                    continue
                if ev.get("event") == "start":
                    self._apply(ev)
                    break
            for k in range(SAMPLES):
                f.seek(int(tail * k / SAMPLES))
                block = f.read(4096)
                nl = block.find(b"\n")
                line = block[nl + 1:block.find(b"\n", nl + 1)] if nl >= 0 else b""
                try:
                    ev = _loads(line)
                except ValueError:  # a sample that landed mid-line: one plot point fewer
                    continue
                if ev.get("event") == "step" and (not self.steps or ev["step"] > self.steps[-1]):
                    self._apply(ev)
                elif ev.get("event") == "eval" and ev.get("eval_loss") is not None:
                    self.eval_steps.append(ev["step"])
                    self.eval_losses.append(ev["eval_loss"])
            f.seek(tail)
            f.readline()  # start the full read on a line boundary
            self.offset = f.tell()
        self.sampled_until = self.steps[-1] if self.steps else 0
        self._last_step_time, self.sec_per_step, self.tokens_per_s_avg = None, 0.0, 0.0

    def _apply(self, ev: dict):
        self.events += 1
        kind = ev.get("event")
        if kind == "step":
            step = ev["step"]
            if self.steps and step <= self.steps[-1]:  # a resumed run redoes steps after its checkpoint
                self._truncate(step)
            self.steps.append(step)
            nan = float("nan")
            loss = ev.get("loss")
            loss = nan if loss is None else loss
            self.losses.append(loss)
            prev = self.smooth[-1] if self.smooth else loss
            if loss != loss:  # a skipped (NaN) step leaves the smoothed curve where it was
                self.smooth.append(prev)
            else:
                self.smooth.append(loss if prev != prev else (1 - self.smoothing) * prev + self.smoothing * loss)
            self.lrs.append(nan if ev.get("lr") is None else ev["lr"])
            self.grad_norms.append(nan if ev.get("grad_norm") is None else ev["grad_norm"])
            tps = ev.get("tokens_per_s") or 0.0
            self.tokens_per_s = tps
            self.tokens_per_s_avg = tps if not self.tokens_per_s_avg else 0.9 * self.tokens_per_s_avg + 0.1 * tps
            self.tokens_seen += ev.get("tokens", 0)
            self.epoch = ev.get("epoch", self.epoch)
            self.elapsed_s = ev.get("elapsed_s", self.elapsed_s)
            t = ev.get("time")
            if self._last_step_time is not None and t is not None and len(self.steps) > 1:
                gap = self.steps[-1] - self.steps[-2]
                dt = (t - self._last_step_time) / max(1, gap)
                if dt > 0:
                    self.sec_per_step = dt if not self.sec_per_step else 0.9 * self.sec_per_step + 0.1 * dt
            self._last_step_time = t
            if ev.get("energy_kwh") is not None:
                self.energy_kwh, self.cost_usd = ev["energy_kwh"], ev.get("cost_usd")
            self.preference.update({k: ev[k] for k in PREFERENCE_STEP if ev.get(k) is not None})
            if ev.get("reward_mean") is not None or self.rewards:
                self.rewards.append(float("nan") if ev.get("reward_mean") is None else ev["reward_mean"])
        elif kind == "eval":
            if ev.get("eval_loss") is not None:
                self.eval_steps.append(ev["step"])
                self.eval_losses.append(ev["eval_loss"])
            if ev.get("sample"):
                self.sample, self.sample_step = ev["sample"], ev["step"]
            self.preference.update({k: ev[k] for k in PREFERENCE_EVAL if ev.get(k) is not None})
            if ev.get("reward_mean") is not None:
                self.eval_reward_steps.append(ev["step"])
                self.eval_rewards.append(ev["reward_mean"])
            if ev.get("sample_total"):
                self.held_out = {"correct": ev["sample_correct"], "total": ev["sample_total"],
                                 "base_correct": ev.get("base_correct"), "samples": ev.get("samples") or [],
                                 "step": ev["step"],
                                 "base_label": "starting model" if self.start.get("adapter") else "base model"}
        elif kind == "completions":
            self.completions = ev
        elif kind == "checkpoint":
            self.checkpoints = [c for c in self.checkpoints if c.step != ev["step"]]
            self.checkpoints.append(Checkpoint(ev["step"], ev.get("path", ""), ev.get("time", 0.0)))
        elif kind == "start":
            self.start, self.end, self.final = ev, None, None
            self.energy = {k: v for k, v in ev.items() if k.startswith("energy_")}
            self.total_steps = ev.get("total_steps") or self.total_steps
            self._last_step_time = None
        elif kind == "end":
            self.end = ev
        elif kind == "final":
            self.final = ev
        elif kind == "download":
            self.download = ev

    def _truncate(self, step):
        i = bisect.bisect_left(self.steps, step)
        for arr in (self.steps, self.losses, self.smooth, self.lrs, self.grad_norms, self.rewards):
            del arr[i:]
        j = bisect.bisect_left(self.eval_steps, step)
        del self.eval_steps[j:]
        del self.eval_losses[j:]
        j = bisect.bisect_left(self.eval_reward_steps, step)
        del self.eval_reward_steps[j:]
        del self.eval_rewards[j:]

    def _read_log(self) -> bool:
        path = self.run_dir / TRAIN_LOG
        size = self._grown(path, self.log_offset)
        if size is None:
            return False
        with open(path, "rb") as f:
            # a long log: only its last 64 KiB matter for the tail
            start = max(self.log_offset, size - 65536)
            f.seek(start)
            data = f.read(size - start)
        if start > self.log_offset:
            self._log_partial = b""
            data = data[data.find(b"\n") + 1:]
        self.log_offset = size
        data = self._log_partial + data
        lines = data.split(b"\n")
        self._log_partial = lines.pop()
        for line in lines:
            self.log_tail.append(line.decode(errors="replace").rstrip("\r").split("\r")[-1])
        self.log_lines_total += len(lines)
        return bool(lines)

    # ---------------------------------------------------------------------- derived
    @property
    def step(self) -> int:
        if self.steps:
            return int(self.steps[-1])
        return int(self.status.get("step") or self.start.get("start_step") or 0)

    @property
    def state(self) -> str:
        """starting / loading / training / evaluating / checkpointing / finished / stopped / crashed / error."""
        if self.end is not None:
            return "crashed" if self.end.get("reason") == "error" else self.end.get("reason", "finished")
        st = self.status.get("state")
        if st == "error":
            return "crashed"
        return st or ("training" if self.steps else "starting")

    @property
    def message(self) -> str:
        if self.end is not None:
            return self.end.get("message") or ""
        if self.state == "crashed":
            return self.status.get("message") or "the trainer's processes are gone without an end event; see train.log"
        return ""

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def last_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def energy_lines(self) -> list:
        """Energy and cost for a panel: so far, or at the end with the cloud estimate beside them; nothing for a
        run whose trainer did not meter energy (written before rigtune did)."""
        from .energy import energy_words, fmt_usd
        f = self.final
        if f is not None:
            n, est = f.get("cloud_cards") or 1, f.get("cloud_usd_estimate")
            card = f"{n}x {f.get('cloud_card')}" if n > 1 else f.get("cloud_card")
            return [energy_words(f.get("energy_kwh"), f.get("cost_usd"), f.get("covers") or ""),
                    f"cloud ~{fmt_usd(est)} ({card})" if est is not None else "cloud: no estimate"]
        if self.energy_kwh is not None:
            return [energy_words(self.energy_kwh, self.cost_usd, self.energy.get("energy_covers") or "GPU+CPU")]
        if self.energy and not self.energy.get("energy_covers"):
            return [energy_words(None, None)]
        return []

    @property
    def eta_s(self) -> float | None:
        if self.finished or not self.total_steps or not self.sec_per_step:
            return None
        return max(0.0, (self.total_steps - self.step) * self.sec_per_step)


PREFERENCE_STEP = ("reward_margin", "reward_accuracy")
PREFERENCE_EVAL = ("pref_accuracy", "base_pref_accuracy")


def downsample(xs, ys, width: int) -> tuple[list, list]:
    """At most `width` points: the mean of the points in each of `width` equal intervals of x (the steps),
    so a densely logged tail and a sampled history weigh the same. All points when there are fewer."""
    n = len(ys)
    if n <= width or width <= 0:
        return list(xs), list(ys)
    import numpy as np
    x = np.frombuffer(xs, dtype=np.float64) if isinstance(xs, array) else np.asarray(xs, dtype=np.float64)
    y = np.frombuffer(ys, dtype=np.float64) if isinstance(ys, array) else np.asarray(ys, dtype=np.float64)
    edges = np.searchsorted(x, np.linspace(x[0], x[-1], width + 1)[1:-1], side="right")
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [n]))
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    cx = np.concatenate(([0.0], np.cumsum(x)))
    cy = np.concatenate(([0.0], np.cumsum(np.nan_to_num(y, nan=0.0))))
    counts = ends - starts
    return ((cx[ends] - cx[starts]) / counts).tolist(), ((cy[ends] - cy[starts]) / counts).tolist()


def fmt_final(ev: dict) -> str:
    """The final event in words: the measured energy and its cost, and the same tokens on a rented card."""
    from .energy import fmt_kwh, fmt_usd
    if ev.get("energy_kwh") is None:
        home = f"energy: not measured ({ev.get('not_measured') or 'no reading'})"
    else:
        part = f" ({ev.get('covers')} only; {ev['not_measured']})" if ev.get("not_measured") else ""
        home = (f"energy {fmt_kwh(ev['energy_kwh'])}{part}, {fmt_usd(ev['cost_usd'])} at "
                f"${ev.get('electricity_usd_per_kwh'):g}/kWh, by {ev.get('method')}")
    if ev.get("cloud_usd_estimate") is None:
        return f"{home}; {ev.get('cloud_note') or 'no cloud estimate'}"
    return (f"{home}; the same {ev.get('tokens') or 0:,} tokens on {ev.get('cloud_cards')} x {ev.get('cloud_card')}, "
            f"rented: ~{fmt_usd(ev['cloud_usd_estimate'])} (planned {ev.get('cloud_tokens_per_s') or 0:,} tokens/s at "
            f"${ev.get('cloud_usd_per_hour'):g}/h, {ev.get('cloud_offer')}, price of {ev.get('cloud_price_date')})")


def recent_runs(root="runs", limit: int = 20) -> list:
    """Run directories under `root`, newest first: [(path, status dict)]."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / METRICS).exists() or (p / STATUS).exists()]
    runs.sort(key=lambda p: max((p / f).stat().st_mtime for f in (METRICS, STATUS) if (p / f).exists()),
              reverse=True)
    return [(p, read_status(p)) for p in runs[:limit]]


def fmt_duration(seconds: float | None) -> str:
    """12:34 or 1:02:03; --:-- when unknown."""
    if seconds is None or seconds != seconds:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


def download_fraction(ev: dict) -> float:
    total = ev.get("bytes_total") or 0
    return min(1.0, (ev.get("bytes_done") or 0) / total) if total else 1.0


def fmt_download(ev: dict, short: bool = False) -> str:
    """'downloading Qwen/Qwen3-8B: 3.2 / 16.4 GB, 112 MB/s, ETA 01:58 (2 of 7 files)'; short: without the
    model's name, for an 80-column status line."""
    done, total, speed = ev.get("bytes_done") or 0, ev.get("bytes_total") or 0, ev.get("bytes_per_s") or 0
    eta = f", ETA {fmt_duration((total - done) / speed)}" if speed and done < total else ""
    what = "" if short else f" {ev.get('model', 'the model')}"
    return (f"downloading{what}: {done / 1e9:.1f} / {total / 1e9:.1f} GB"
            + (f", {speed / 1e6:.0f} MB/s" if speed else "") + eta
            + f" ({ev.get('files_done', 0)} of {ev.get('files_total', 0)} files)")


class Follower(RunView):
    """A run as lines of text, for `rigtune train --no-tui` and `rigtune watch` without a terminal: one line per
    logged step (with the run view's ETA), eval, checkpoint and warning. `take_lines()` returns what is new
    since the last call; `end` holds the end event once it came."""

    def __init__(self, run_dir):
        super().__init__(run_dir, read_log=False)
        self._lines: list = []

    def take_lines(self) -> list:
        lines, self._lines = self._lines, []
        return lines

    def _download_line(self, ev: dict) -> str | None:
        """One line per tenth of the download (and at each file's end), not one per event."""
        tenth = int(10 * download_fraction(ev))
        key = (tenth, ev.get("files_done"))
        if key == getattr(self, "_download_key", None):
            return None
        self._download_key = key
        return fmt_download(ev)

    def _apply(self, ev: dict):
        super()._apply(ev)
        line = self.describe(ev)
        if line is not None:
            self._lines.append(line)

    def describe(self, ev: dict) -> str | None:
        kind, total = ev.get("event"), self.total_steps
        if kind == "start":
            return (f"start: {ev.get('world_size')} process(es), {total} steps, {ev.get('trainable_params') or 0:,} "
                    "trainable params" + (f", resumed from {ev['resumed_from']}" if ev.get("resumed_from") else ""))
        if kind == "step" and ev.get("skipped"):
            return f"step {ev['step']}/{total}  skipped: loss or gradient was NaN/inf"
        if kind == "step":
            pref = (f"  margin {ev['reward_margin']:.3f}  acc {ev['reward_accuracy']:.2f}"
                    if ev.get("reward_margin") is not None else "")
            if ev.get("reward_mean") is not None:  # GRPO
                pref = (f"  reward {ev['reward_mean']:.3f} (std {ev.get('reward_std') or 0:.3f})  "
                        f"length {ev.get('completion_length') or 0:.0f}  kl {ev.get('kl') or 0:.4f}")
            return (f"step {ev['step']}/{total}  loss {ev['loss']:.4f}{pref}  lr {ev['lr']:.2e}  "
                    f"{ev.get('tokens_per_s') or 0:.0f} tok/s  ETA {fmt_duration(self.eta_s)}")
        if kind == "eval":
            s = ev.get("sample") or {}
            loss = f"eval_loss {ev['eval_loss']:.4f}" if ev.get("eval_loss") is not None else "eval"
            completion = (s.get("completion") or "").replace("\n", " ")[:60]
            if ev.get("solved") is not None:  # GRPO
                loss = (f"held-out reward {ev['reward_mean']:.3f}, solved {ev['solved']:.2f}" + (
                    f" (the base: {ev['base_reward_mean']:.3f}, solved {ev['base_solved']:.2f})"
                    if ev.get("base_solved") is not None else ""))
            if ev.get("pref_accuracy") is not None:
                loss += f"  preference accuracy {ev['pref_accuracy']:.2f}" + (
                    f" (the starting model: {ev['base_pref_accuracy']:.2f})" if ev.get("base_pref_accuracy") is not None
                    else "")
            if ev.get("sample_total"):
                return (f"  {loss}  held-out check: {ev['sample_correct']} of {ev['sample_total']} answered right "
                        f"(the {'starting' if self.start.get('adapter') else 'base'} model: {ev.get('base_correct')})")
            return f"  {loss}" + (f"  sample: {completion!r}" if s else "")
        if kind == "checkpoint":
            return f"  checkpoint {ev['path']}"
        if kind == "final":
            return f"  {fmt_final(ev)}"
        if kind == "download":
            return self._download_line(ev)
        if kind in ("warning", "oom_fallback"):
            detail = ev.get("message") or (f"out of memory: micro-batch {ev['micro_batch_size'][0]} -> "
                                           f"{ev['micro_batch_size'][1]}, resuming from step {ev['step']}")
            return f"  {kind}: {detail}"
        return None
