"""What a torch-side process (the trainer; export and chat share the quiet logging) needs around its work: the
exceptions that end a run, stop signals, the one-trainer lock on a run directory, the fault-injection seam the
tests use, and library logging kept out of train.log."""
from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

from ..errors import BadInput
from ..events import LOCK


class Aborted(Exception):
    """A second stop signal: leave at once (the last complete checkpoint stays as it is)."""


class TrainingFailed(Exception):
    """A failure with a message for the user (NaN loss, out of memory, disk full); exit 1, no traceback."""


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


def quiet_libraries():
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
