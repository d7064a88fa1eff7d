"""`rigtune watch` and `stop`, and following a run: the dashboard on a terminal, one line per logged step
otherwise, and what to say on leaving it."""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from engine.errors import BadInput
from engine.events import ADAPTER, METRICS, RUN_FILE, STATUS, TRAIN_LOG

from .common import use_tui


# ---------------------------------------------------------------------------- follow

def follow(run_dir: Path, proc=None, out=sys.stdout) -> int:
    """Print a line per logged step (engine.runview.Follower) until the run's process group is gone; Ctrl-C
    asks the trainer to stop (engine.launch.stop). Returns the run's exit status."""
    from engine.events import group_alive, read_status_raw
    from engine.launch import stop
    from engine.runview import Follower

    pgid = read_status_raw(run_dir).get("pgid") or (proc.pid if proc else None)
    view = Follower(run_dir)

    def forward(signum, frame):
        try:
            stop(run_dir)
        except BadInput:  # status.json not there yet: nothing to signal, the launcher's group still gets it
            if pgid:
                os.killpg(pgid, signal.SIGTERM)
        print("\nstopping after this step (checkpoint and adapter are saved)...", file=out, flush=True)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            view.poll()
            for line in view.take_lines():
                print(line, file=out, flush=True)
            launcher_done = proc is None or proc.poll() is not None
            if launcher_done and not group_alive(pgid):
                view.poll()
                for line in view.take_lines():
                    print(line, file=out, flush=True)
                break
            time.sleep(0.3)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    end = view.end
    if end is None:
        print(f"the trainer ended without an end event; see {run_dir / TRAIN_LOG}", file=sys.stderr)
        return 1
    if end["reason"] == "error":
        print(f"rigtune: training failed: {end.get('message')}\n(log: {run_dir / TRAIN_LOG})", file=sys.stderr)
        return int(end.get("exit_code") or 1)
    print(f"{end['reason']} at step {end.get('step')}: adapter in {run_dir / ADAPTER}", file=out)
    return 0


# ---------------------------------------------------------------------------- watch

def dashboard(run_dir=None, pick_from=None) -> int:
    from ..app import RigtuneApp
    RigtuneApp(run_dir=run_dir, pick_from=pick_from).run()
    if run_dir is not None:
        print(left_message(Path(run_dir)))
    return 0


def left_message(run_dir: Path) -> str:
    """What to say on leaving the dashboard: a live run goes on; a finished one says where its adapter is."""
    from engine.events import read_status
    st = read_status(run_dir)
    state = st.get("state")
    if state == "finished":
        return f"the run is finished (step {st.get('step')}); its adapter is in {run_dir / ADAPTER}"
    if state in ("stopped", "error", "crashed"):
        return (f"the run is {state} at step {st.get('step')}; continue it with: rigtune train "
                f"{run_dir / RUN_FILE} --resume")
    return f"detached; training goes on. Re-attach with: rigtune watch {run_dir}"


def cmd_watch(args) -> int:
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if not (run_dir / METRICS).exists() and not (run_dir / STATUS).exists():
            raise BadInput("not a run directory (no metrics.jsonl or status.json); `rigtune watch` with no "
                           "argument lists recent runs.", path=str(run_dir))
        if not use_tui(True):
            return follow(run_dir)
        return dashboard(run_dir)
    if not use_tui(True):
        raise BadInput("watching needs a terminal; give a RUN_DIR to follow it as plain lines.", key="watch")
    return dashboard(pick_from=args.runs)


# ---------------------------------------------------------------------------- stop

def cmd_stop(args) -> int:
    from engine.launch import stop
    run_dir = Path(args.run_dir)
    what, st = stop(run_dir, wait_s=args.timeout)
    if what == "not-running":
        print(f"{run_dir}: not running (state {st['state']}, step {st.get('step')})")
    elif what == "gone":
        print(f"{run_dir}: its processes are gone (state {st.get('state')})")
    elif what == "still-running":
        print(f"still running after {args.timeout:.0f} s (saving can take a while); run `rigtune stop` again to "
              "wait more", file=sys.stderr)
        return 1
    else:
        print(f"asked the trainer to stop after its current step...\n{run_dir}: {st.get('state')} at step "
              f"{st.get('step')}")
    return 0


# ---------------------------------------------------------------------------- the parsers

def _add_watch(sub) -> None:
    p = sub.add_parser("watch", help="re-attach the dashboard to a run")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--runs", default="runs", help="where to look for recent runs")
    p.set_defaults(func=cmd_watch)


def _add_stop(sub) -> None:
    p = sub.add_parser("stop", help="stop a run gracefully")
    p.add_argument("run_dir")
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(func=cmd_stop)


PARSERS = {"watch": _add_watch, "stop": _add_stop}
