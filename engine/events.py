"""The run directory: the names of its files, its event stream (metrics.jsonl) and its status (status.json).

metrics.jsonl is append-only, one JSON object per line. A writer killed mid-line leaves a partial last line:
readers skip it, and the next writer starts on a fresh line. status.json is replaced atomically.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

# what a run directory holds (README, "Run directory"); every module names these files through here
RUN_FILE = "run.toml"            # the run file as launched
METRICS = "metrics.jsonl"        # the event stream
STATUS = "status.json"           # the latest state
TRAIN_LOG = "train.log"          # the trainer's stdout and stderr
CHECKPOINTS = "checkpoints"      # checkpoints/step-NNNNNN/
ADAPTER = "adapter"              # the final PEFT adapter
PLAN = "plan.json"               # what the planner expected, to compare with the measured peak
LOCK = ".lock"                   # held by the running trainer
FINAL_STATES = ("finished", "stopped", "error", "crashed")


class EventLog:
    def __init__(self, run_dir):
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        if self._f.tell() > 0:
            with open(self.path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":  # a writer died mid-line: start clean
                    self._f.write(b"\n")

    def write(self, event: str, sync: bool = False, **fields) -> dict:
        obj = {"event": event, "time": round(time.time(), 3), **fields}
        self._f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode())
        self._f.flush()
        if sync:
            os.fsync(self._f.fileno())
        return obj

    def close(self):
        self._f.close()


def read_events(run_dir, offset: int = 0) -> tuple[list, int]:
    """Complete events from byte `offset` on, and the offset to read from next time."""
    path = Path(run_dir) / METRICS
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:  # the trainer has not written its first event yet
        return [], offset
    end = chunk.rfind(b"\n") + 1  # a partial last line waits for its newline
    events = []
    for line in chunk[:end].splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the torn tail of a killed writer
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
    return events, offset + end


def write_status(run_dir, **fields) -> None:
    path = Path(run_dir) / STATUS
    data = {**read_status_raw(run_dir), **fields, "updated": round(time.time(), 3)}
    tmp = path.with_name(f".{STATUS}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_status_raw(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-replace on a non-POSIX filesystem
        return {}


def pid_alive(pid) -> bool:
    """True if the process runs. A zombie (dead, not yet reaped by its parent) counts as gone."""
    import psutil
    if not pid:
        return False
    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):  # gone, or not a pid: not alive either way
        return False


def group_alive(pgid) -> bool:
    """True while any live (non-zombie) process is in process group `pgid`."""
    import psutil
    if not pgid:
        return False
    try:
        os.killpg(int(pgid), 0)
    except ProcessLookupError:  # no process in that group
        return False
    except PermissionError:  # processes exist, owned by another user
        return True
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == int(pgid) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):  # ended while we looked: not a member any more
            continue
    return False


def read_status(run_dir) -> dict:
    """status.json, with a state that was not final but whose processes are gone read as 'crashed'."""
    st = read_status_raw(run_dir)
    if st and st.get("state") not in FINAL_STATES and not (pid_alive(st.get("pid")) or group_alive(st.get("pgid"))):
        st["state"] = "crashed"
    return st
