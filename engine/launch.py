"""Start the trainer detached (under `accelerate launch` when it runs several processes): its own session and
process group, output to train.log, so that it outlives the terminal. Everything is an argument list; nothing
goes through a shell."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import runfile
from .errors import BadInput
from .events import FINAL_STATES, METRICS, PLAN, RUN_FILE, STATUS, TRAIN_LOG, group_alive, read_status, write_status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_threads(processes: int) -> int:
    """Threads per training process: OMP_NUM_THREADS when the user set it, else the cores shared out."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):  # unset, or not a number: share the cores out
        return max(1, (os.cpu_count() or 1) // processes)


def accelerate_command(cfg, run_dir: Path, resume: bool, allow_changes: bool = False) -> tuple[list, dict]:
    """The trainer's argument list and environment additions for this run file: `accelerate launch` for
    several processes; for one, the trainer itself (its Accelerator needs no launcher, and the launcher's
    extra Python process costs seconds at start)."""
    hw = cfg.hardware
    total = hw.num_processes * hw.num_machines
    trainer = ["-m", "engine.torchside.trainer", str(run_dir)] + (["--resume"] if resume else [])
    trainer += ["--allow-changes"] if resume and allow_changes else []
    env = {"PYTHONUNBUFFERED": "1"}
    if hw.gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in hw.gpus)
    if total == 1:
        env.update(OMP_NUM_THREADS=str(cpu_threads(1)), ACCELERATE_MIXED_PRECISION="no")
        return [sys.executable, *trainer], env
    if not hw.gpus:
        env["ACCELERATE_USE_CPU"] = "true"  # with --multi_gpu this gives gloo ranks on the CPU
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--quiet",
            "--num_processes", str(total), "--num_machines", str(hw.num_machines),
            "--machine_rank", str(hw.machine_rank), "--mixed_precision", "no", "--dynamo_backend", "no",
            "--num_cpu_threads_per_process", str(cpu_threads(hw.num_processes)),
            "--multi_gpu", "--main_process_port", str(hw.main_process_port or free_port())]
    if hw.num_machines > 1:
        argv += ["--main_process_ip", hw.main_process_ip]
    return argv + trainer, env


def _absolute(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    if p.is_absolute():
        return value
    candidate = base / p
    return str(candidate.resolve()) if candidate.exists() else value


def free_name(values: dict) -> dict:
    """Rename the run (name, name-2, ...) until its directory under output_root holds no run yet."""
    root, base, n = Path(values["output_root"]), values["name"], 1
    while (root / values["name"] / METRICS).exists():
        n += 1
        values["name"] = f"{base}-{n}"
    return values


def prepare_run_dir(cfg, resume: bool, cwd: Path | None = None) -> Path:
    """Create (or reopen, for --resume) the run directory and write run.toml with local paths made absolute."""
    cwd = cwd or Path.cwd()
    run_dir = runfile.run_dir(cfg, cwd)
    has_run = (run_dir / METRICS).exists()
    if has_run and not resume:
        raise BadInput(f"run directory {run_dir} already holds a run; continue it with --resume, or give the "
                       "run another name.", path=cfg.path, key="name")
    if resume and not has_run:
        raise BadInput(f"nothing to resume in {run_dir}; start it without --resume.", path=cfg.path, key="name")
    st = read_status(run_dir)
    if st.get("state") in ("starting", "loading", "training", "evaluating", "checkpointing"):
        raise BadInput(f"a trainer is already running in {run_dir} (pid {st.get('pid')}); watch it with "
                       f"`rigtune watch {run_dir}` or stop it with `rigtune stop {run_dir}`.", path=cfg.path)
    values = cfg.to_dict()
    values["output_root"] = str(run_dir.parent)
    values["model"]["base"] = _absolute(values["model"]["base"], cwd)
    values["data"]["path"] = _absolute(values["data"]["path"], cwd)
    if values["data"]["eval_path"]:
        values["data"]["eval_path"] = _absolute(values["data"]["eval_path"], cwd)
    if values["rewards"]["function"]:  # taken relative to the run file, which the run directory's copy is not beside
        from .rewards import function_path
        file, name = function_path(cfg)
        values["rewards"]["function"] = f"{file}:{name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    runfile.save(values, run_dir / RUN_FILE, header=f"as launched from {cfg.path or 'a run file'}")
    return run_dir


def write_plan(cfg, run_dir: Path) -> None:
    """plan.json: what the planner expects this run to need per GPU, for `rigtune plan` to compare with the
    peak the trainer measures. Only for GPU runs of a model the planner knows without a download."""
    if not cfg.hardware.gpus:
        return
    import json
    from . import planner as P
    from .scan import scan
    try:
        arch = P.resolve_model(cfg.model.base)
    except BadInput:  # a model the planner cannot read without a download: no plan to compare later
        return
    gpus = scan().gpus
    sizes = [gpus[i].memory_total_gib for i in cfg.hardware.gpus if i < len(gpus)]
    if not sizes:
        return
    plan = P.plan(P.input_from_run(cfg, arch, sizes, None))
    (run_dir / PLAN).write_text(json.dumps({"model": arch.name, **plan.to_json()}, indent=1))


def check_gpus(cfg, nvml=None) -> None:
    """Refuse a GPU run file on a machine that lacks those GPUs, before anything starts (a file planned for
    another machine, e.g. a tier the user does not own yet)."""
    want = cfg.hardware.gpus
    if not want:
        return
    from .scan import nvml_module, scan_gpus
    nvml = nvml if nvml is not None else nvml_module()
    gpus, _, _, err = scan_gpus(nvml) if nvml is not None else ([], None, None, "pynvml not installed")
    if any(g >= len(gpus) for g in want):
        have = f"{len(gpus)} NVIDIA GPU(s)" if gpus else f"no NVIDIA GPU ({err})" if err else "no NVIDIA GPU"
        raise BadInput(f"this run file trains on gpus = {want}, but this machine has {have}. Train it on the "
                       "machine it was planned for, or set gpus = [] and strategy = \"single\" to train on the CPU.",
                       path=cfg.path, key="hardware.gpus")


def launch(cfg, resume: bool = False, cwd: Path | None = None, allow_changes: bool = False,
           data_files: list | None = None) -> tuple[subprocess.Popen, Path]:
    """Start training detached. Returns the launcher process and the run directory. On --resume the newest
    verified checkpoint is compared with this run file and dataset first (BadInput if they changed)."""
    from .modelref import check_base
    check_base(cfg, cwd)
    check_gpus(cfg)
    if resume:
        from . import checkpoint as C
        if data_files is None:
            from .prefdata import load_for_method
            data_files = load_for_method(cfg)[2]
        C.check_resume(runfile.run_dir(cfg, cwd), cfg, data_files, allow_changes)
    from .modelref import DEMO_MODEL, is_local_model
    if cfg.model.base != DEMO_MODEL and not is_local_model(cfg.model.base):
        from . import hub  # gated, missing or too big for the disk: said now, not minutes into the run
        hub.check_download(cfg.model.base, cfg.model.revision or None, cfg.model.trust_remote_code)
    if cfg.train.method == "grpo":
        from .rewards import Rewards
        Rewards.from_config(cfg)  # a reward function that cannot be imported fails now, not in the trainer
    run_dir = prepare_run_dir(cfg, resume, cwd)
    write_plan(cfg, run_dir)
    argv, extra_env = accelerate_command(cfg, run_dir, resume, allow_changes)
    env = {**os.environ, **extra_env}
    write_status(run_dir, state="starting", step=0, total_steps=0, message="")
    with open(run_dir / TRAIN_LOG, "ab") as logf:
        logf.write(f"\n=== rigtune: {' '.join(argv)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd or Path.cwd()), start_new_session=True)
    write_status(run_dir, pid=proc.pid, pgid=proc.pid, launcher_pid=proc.pid)
    return proc, run_dir


def export_command(run_dir, to: str, **options) -> list:
    """The argument list of an export (engine.torchside.export, in its own process): options are its flags
    without dashes (out, checkpoint, quant, merge_into, system; force and base as booleans)."""
    argv = [sys.executable, "-m", "engine.torchside.export", str(run_dir), "--to", to]
    for key, value in options.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value not in (None, False, ""):
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def stop(run_dir, wait_s: float = 0.0, poll_s: float = 0.3) -> tuple[str, dict]:
    """Ask a run's trainer to stop after its current step (it saves a checkpoint and the adapter): SIGTERM to
    its process group. With wait_s, wait up to that long for the group to be gone. Returns (what happened,
    the status then): "not-running" (already in a final state), "gone" (its processes had died), "asked"
    (signalled, not waited for), "stopped" (signalled and gone) or "still-running" (signalled, still saving)."""
    from pathlib import Path
    run_dir = Path(run_dir)
    if not (run_dir / STATUS).exists():
        raise BadInput("not a run directory (no status.json).", path=str(run_dir))
    st = read_status(run_dir)
    if st.get("state") in FINAL_STATES:
        return "not-running", st
    pgid = st.get("pgid")
    if not pgid:
        raise BadInput("status.json names no process group; the run may still be starting, try again.",
                       path=str(run_dir / STATUS))
    try:
        os.killpg(int(pgid), signal.SIGTERM)
    except ProcessLookupError:
        return "gone", read_status(run_dir)
    if wait_s <= 0:
        return "asked", st
    deadline = time.time() + wait_s
    while group_alive(pgid) and time.time() < deadline:
        time.sleep(poll_s)
    return ("still-running" if group_alive(pgid) else "stopped"), read_status(run_dir)
