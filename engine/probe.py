"""`rigtune probe`: measure this machine at a run file's model and settings, then keep the figures
(engine.calibration) for `plan`, the fit meter and the time estimate.

A probe is a few short real runs of the trainer ("trials"), each in its own process so that an out-of-memory
ends only that trial: first the run file's own seq_len and micro-batch (its peak memory and tokens/s), then a
search in bounded steps for the longest sequence (at that micro-batch) and the largest micro-batch (at that
length) that really fit - doubling up to the first that does not, or down from a planned one that does not, then
one halving step between the last that fit and the first that did not. The search stops at the model's
context, at MAX_MICRO_BATCH, and at the time limit, and says which bound it reached.

A trial needs no download: the model is built from its config.json with random weights of the real shape
(engine.torchside.shape), which weigh and run exactly like the real ones, and trains on rows of random tokens
exactly max_seq_len long (engine.torchside.methods.probe). On a GPU a trial fits unless it runs out of memory;
on the CPU its peak RSS must also stay within RAM_SHARE of the memory available when the probe starts.

Test seam: RIGTUNE_PROBE_FAULT="oom_above@TOKENS" gives every trial with more than TOKENS tokens per micro-batch
an injected CUDA out-of-memory (RIGTUNE_FAULT="oom@1", the trainer's own fault seam) - a card that small."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import calibration as K
from . import runfile
from .errors import BadInput
from .events import RUN_FILE, TRAIN_LOG, read_events

MAX_MICRO_BATCH = 64
MAX_SEQ_LEN = 131072
MIN_SEQ_LEN = 64
RAM_SHARE = 0.9          # of the RAM available at the start: what a CPU trial may use
TIMED_STEPS = {"planned": 6, "search": 2}  # steps per trial; the first is warm-up and is not timed
DEFAULT_TIME_LIMIT_S = 600


@dataclass
class Trial:
    seq_len: int
    micro_batch: int
    fits: bool
    why: str = ""                       # why it does not fit: "out of memory", "over the RAM budget ..."
    peak_gib: float | None = None       # GPU memory reserved at the peak, or the process's peak RSS on the CPU
    peak_rss_gib: float | None = None
    tokens_per_s: float | None = None
    seconds: float = 0.0


@dataclass
class Result:
    peak_gib: float
    tokens_per_s: float | None
    max_seq_len: int
    max_micro_batch: int
    measured_at: str
    device: str                         # "cuda" or "cpu"
    peak_is: str                        # what peak_gib measures
    seq_len: int
    micro_batch: int
    model: str
    machine: dict
    limits: dict                        # max_seq_len / max_micro_batch -> what bounded the search
    seconds: float
    trials: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


class ProbeFailed(Exception):
    """A trial failed for another reason than memory: the probe cannot measure this run file here."""


# ---------------------------------------------------------------------------- the probe

def probe(cfg, time_limit_s: float = DEFAULT_TIME_LIMIT_S, progress=print, work_root: Path | None = None) -> Result:
    """Measure `cfg` (a checked run file) on this machine, store the figures and return them."""
    start = time.time()
    arch, shape_dir = shape_folder(cfg, progress)
    root = Path(work_root or (shape_dir.parent.parent / "probe-runs")) / f"probe-{os.getpid()}-{int(start)}"
    session = Session(cfg, shape_dir, root, start + time_limit_s, progress, _context(shape_dir))
    try:
        seq, mbs = cfg.data.max_seq_len, cfg.train.micro_batch_size
        first = session.trial(seq, mbs, "planned")
        if first is None:
            raise ProbeFailed(f"the time limit ({time_limit_s:g} s) ended before the first trial finished; give "
                              "--time-limit more seconds.")
        best_mbs, mbs_bound = session.search("micro_batch", mbs, MAX_MICRO_BATCH, lambda v: (seq, v))
        best_seq, seq_bound = session.search("seq_len", seq, min(MAX_SEQ_LEN, session.context), lambda v: (v, mbs))
        if not first.fits:
            raise ProbeFailed(_not_fitting(cfg, first, best_seq, best_mbs))
        machine = K.machine_id(list(cfg.hardware.gpus))
        result = Result(peak_gib=first.peak_gib, tokens_per_s=first.tokens_per_s, max_seq_len=best_seq,
                        max_micro_batch=best_mbs, measured_at=K.now(), device=session.device,
                        peak_is="GPU memory reserved" if session.device == "cuda" else "process peak RSS",
                        seq_len=seq, micro_batch=mbs, model=arch.name, machine=machine,
                        limits={"max_seq_len": seq_bound, "max_micro_batch": mbs_bound},
                        seconds=round(time.time() - start, 1), trials=[asdict(t) for t in session.trials])
        _store(cfg, arch, result, session.trials)
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _not_fitting(cfg, first: Trial, best_seq: int, best_mbs: int) -> str:
    fits = []
    if best_mbs:
        fits.append(f"micro_batch_size = {best_mbs} at max_seq_len {cfg.data.max_seq_len}")
    if best_seq:
        fits.append(f"max_seq_len = {best_seq} at micro_batch_size {cfg.train.micro_batch_size}")
    return (f"the run file's settings do not fit this machine: {first.why}. "
            + (f"What did fit: {'; '.join(fits)}." if fits else "Nothing smaller fit either."))


def _store(cfg, arch, result: Result, trials: list) -> None:
    """Every trial that fit is a measured point; the planned one also carries the search's limits."""
    machine, shape, settings = result.machine, K.shape_id(arch), K.settings_of(cfg)
    records = []
    for t in trials:
        if not t.fits:  # kept too: anything at least this long and this large does not fit either
            records.append({**K.record(machine, shape, settings, t.seq_len, t.micro_batch, 0, None, "probe"),
                            "peak_gib": None, "fits": False, "why": t.why})
            continue
        extra = {"max_seq_len": result.max_seq_len, "max_micro_batch": result.max_micro_batch} \
            if (t.seq_len, t.micro_batch) == (result.seq_len, result.micro_batch) else {}
        records.append(K.record(machine, shape, settings, t.seq_len, t.micro_batch, t.peak_gib, t.tokens_per_s,
                                "probe", **extra))
    K.add(records)


def _context(shape_dir: Path) -> int:
    config = json.loads((shape_dir / "config.json").read_text())
    text = config.get("text_config") or config
    return int(text.get("max_position_embeddings") or MAX_SEQ_LEN)


# ---------------------------------------------------------------------------- the model's shape

def shape_folder(cfg, progress=print):
    """(Arch, a folder holding only the model's config.json and the shape mark) for the run file's model: the
    demo model's, a local folder's, or a hub model's config.json (fetched through rigtune's checked download,
    a few KB; no weights)."""
    from . import planner as P
    from .demo import cache_dir
    from .runvalues import DEMO_MODEL
    from .modelref import SHAPE_MARK
    base = cfg.model.base
    if base == DEMO_MODEL:
        from .demo import demo_model
        base = str(demo_model(progress))
    config, source = P.model_config(base, online=True, revision=cfg.model.revision or None)
    local = Path(base).expanduser().exists()
    arch = P.arch_from_config(config, name=cfg.model.base if cfg.model.base == DEMO_MODEL or not local else
                              Path(base).name, hf_id="" if local else base)
    # the name comes from config.json (a hub's answer for a hub id): only safe characters, never a path
    folder = cache_dir() / "shapes" / re.sub(r"[^A-Za-z0-9_-]", "_", K.shape_id(arch))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / SHAPE_MARK).write_text(json.dumps({"model": base, "config_from": source}))
    return arch, folder


# ---------------------------------------------------------------------------- trials

class Session:
    """The trials of one probe: each runs the trainer in its own process (and process group) in a run directory
    of its own, within what is left of the time limit."""

    def __init__(self, cfg, shape_dir: Path, root: Path, deadline: float, progress, context: int):
        self.cfg, self.shape_dir, self.root, self.deadline, self.progress = cfg, shape_dir, root, deadline, progress
        self.context = context
        self.trials: list[Trial] = []
        self.device = "cuda" if cfg.hardware.gpus else "cpu"
        self.ram_budget_gib = _ram_available_gib() * RAM_SHARE if self.device == "cpu" else None
        self.stopped_by_time = False

    def known(self, seq: int, mbs: int) -> Trial | None:
        return next((t for t in self.trials if (t.seq_len, t.micro_batch) == (seq, mbs)), None)

    def trial(self, seq: int, mbs: int, kind: str = "search") -> Trial | None:
        """The trial at (seq, mbs) - run now, or the one already run -; None when the time limit leaves no room
        for it (judged by the longest trial so far)."""
        done = self.known(seq, mbs)
        if done is not None:
            return done
        longest = max((t.seconds for t in self.trials), default=0.0)
        left = self.deadline - time.time()
        if left <= 0 or (self.trials and longest > left):
            self.stopped_by_time = True
            return None
        n = len(self.trials) + 1
        self.progress(f"probe trial {n}: max_seq_len {seq}, micro-batch {mbs} ...")
        t = self._run(seq, mbs, TIMED_STEPS[kind], left, n)
        self.trials.append(t)
        said = (f"fits, peak {t.peak_gib:.2f} GiB" + (f", {t.tokens_per_s:,.0f} tokens/s" if t.tokens_per_s else "")
                if t.fits else f"does not fit ({t.why})")
        self.progress(f"probe trial {n}: max_seq_len {seq}, micro-batch {mbs}: {said} [{t.seconds:.0f} s]")
        return t

    def search(self, what: str, start: int, cap: int, at) -> tuple[int, str]:
        """The largest value of `what` that fits (0 if none), with the other setting fixed (`at(value)` gives
        (seq, mbs)), and what bounded it."""
        floor = MIN_SEQ_LEN if what == "seq_len" else 1
        first = self.trial(*at(start))
        if first is None:
            return 0, "the time limit"
        fit, fail, value = (start, None, start) if first.fits else (0, start, start)
        while True:  # doubling up from a fit, halving down from a failure
            value = value * 2 if fit == value else value // 2
            if fit and fail is None and value > cap:
                return fit, (f"the model's context, {cap}" if what == "seq_len" and cap == self.context
                             else f"the search's cap, {cap}")
            if not fit and value < floor:
                return 0, f"nothing from {floor} fits"
            t = self.trial(*at(value))
            if t is None:
                return fit, "the time limit"
            if t.fits:
                fit = value
                if fail is not None:
                    break
            else:
                fail = value
                if fit:
                    break
        mid = (fit + fail) // 2 if what == "micro_batch" else ((fit + fail) // 2 // 64) * 64
        key = {"micro_batch": "micro_batch_size", "seq_len": "max_seq_len"}[what]
        if fit < mid < fail:  # one halving step between the last that fit and the first that did not
            t = self.trial(*at(mid))
            if t is None:
                return fit, "the time limit"
            if t.fits:
                return mid, f"{key} {fail} did not fit ({self.known(*at(fail)).why})"
            fail = mid
        return fit, f"{key} {fail} did not fit ({self.known(*at(fail)).why})"

    def _run(self, seq: int, mbs: int, steps: int, left: float, n: int) -> Trial:
        from .launch import accelerate_command
        run_dir = self.root / f"trial-{n}"
        run_dir.mkdir(parents=True)
        values = self.cfg.to_dict()
        values.update(name=run_dir.name, output_root=str(self.root))
        values["model"].update(base=str(self.shape_dir), revision="")
        values["data"].update(max_seq_len=seq)
        values["train"].update(micro_batch_size=mbs, gradient_accumulation_steps=1, max_steps=steps,
                               log_every_steps=1, eval_every_steps=0, save_every_steps=0, warmup_ratio=0.0,
                               oom_fallback=False, report_to=[], sample_max_new_tokens=0)
        runfile.save(values, run_dir / RUN_FILE, header="a trial of rigtune probe")
        cfg = runfile.load(run_dir / RUN_FILE)
        argv, env = accelerate_command(cfg, run_dir, False)
        env = {**os.environ, **env, **_fault_env(seq * mbs)}
        t0 = time.time()
        with open(run_dir / TRAIN_LOG, "ab") as log:
            proc = subprocess.Popen(argv + ["--probe"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=max(1.0, left))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = None
        return self._read(run_dir, seq, mbs, code, round(time.time() - t0, 1))

    def _read(self, run_dir: Path, seq: int, mbs: int, code, seconds: float) -> Trial:
        events, _ = read_events(run_dir)
        end = next((e for e in reversed(events) if e["event"] == "end"), {})
        memory = next((e for e in reversed(events) if e["event"] == "memory"), {})
        speeds = [e["tokens_per_s"] for e in events if e["event"] == "step" and e.get("step", 0) > 1
                  and e.get("tokens_per_s")]
        t = Trial(seq, mbs, fits=False, seconds=seconds, peak_rss_gib=memory.get("peak_rss_gib"),
                  peak_gib=memory.get("peak_gib", memory.get("peak_rss_gib")),
                  tokens_per_s=round(statistics.median(speeds), 1) if speeds else None)
        message = str(end.get("message", ""))
        if code is None:
            raise ProbeFailed(f"the time limit ended during trial {run_dir.name} (max_seq_len {seq}, micro-batch "
                              f"{mbs}); give --time-limit more seconds.")
        if end.get("reason") == "finished" and code == 0:
            t.fits = True
            if self.ram_budget_gib is not None and (t.peak_gib or 0) > self.ram_budget_gib:
                t.fits, t.why = False, f"over the RAM budget, {t.peak_gib:.1f} of {self.ram_budget_gib:.1f} GiB"
            return t
        if "out of memory" in message.lower() or code in (-signal.SIGKILL, 137):
            t.why = "out of memory" if "out of memory" in message.lower() else "killed, most likely out of RAM"
            return t
        tail = message or _log_tail(run_dir)
        raise ProbeFailed(f"a trial failed (max_seq_len {seq}, micro-batch {mbs}): {tail}")


def _fault_env(tokens: int) -> dict:
    spec = os.environ.get("RIGTUNE_PROBE_FAULT", "")
    kind, _, limit = spec.partition("@")
    if kind == "oom_above" and limit.isdigit() and tokens > int(limit):
        return {"RIGTUNE_FAULT": "oom@1"}
    return {}


def _log_tail(run_dir: Path) -> str:
    try:
        lines = (run_dir / TRAIN_LOG).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def _ram_available_gib() -> float:
    import psutil
    return psutil.virtual_memory().available / 2**30


def load_run_file(path: str | None):
    """The run file to probe: the one given, or the CPU demo's on a machine without a GPU."""
    if path:
        return runfile.load(path)
    from .scan import nvml_module, scan_gpus
    nvml = nvml_module()
    gpus = scan_gpus(nvml)[0] if nvml is not None else []
    if gpus:
        raise BadInput("say which run to measure: `rigtune probe RUN_FILE` (the run file's model and settings are "
                       "what the probe measures on this machine).", key="RUN_FILE")
    from .runvalues import values_for
    return runfile.validate(values_for("cpu-demo", None, None)[0], path="preset cpu-demo")


