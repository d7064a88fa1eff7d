"""Talking to what a run trained: find its adapter (the final one or a checkpoint's), and drive the chat
backend (engine.torchside.chat) in its own process over a pipe of JSON lines. Plain Python: the command line
and the chat screen use this, and never import torch."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import BadInput
from .events import ADAPTER, CHECKPOINTS, RUN_FILE

ADAPTER_FILE = "adapter_model.safetensors"


def adapter_dir(run_dir, checkpoint: str | None = None) -> Path:
    """The adapter folder to load: RUN_DIR/adapter, or RUN_DIR/checkpoints/step-N (given as step-N or N)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).exists():
        raise BadInput("not a run directory (no run.toml); give the folder `rigtune train` wrote.", path=str(run_dir))
    steps = sorted(p.name for p in (run_dir / CHECKPOINTS).glob("step-*") if (p / ADAPTER_FILE).exists()) \
        if (run_dir / CHECKPOINTS).is_dir() else []
    if checkpoint:
        name = checkpoint if checkpoint.startswith("step-") else f"step-{int(checkpoint):06d}" if checkpoint.isdigit() else checkpoint
        path = run_dir / CHECKPOINTS / name
        if not (path / ADAPTER_FILE).exists():
            raise BadInput(f"no checkpoint {checkpoint!r} here; checkpoints on disk: {', '.join(steps) or 'none'}.",
                           path=str(run_dir), key="--checkpoint")
        return path
    if not (run_dir / ADAPTER / ADAPTER_FILE).exists():
        hint = f" Checkpoints on disk: {', '.join(steps)} (use --checkpoint)." if steps else ""
        raise BadInput(f"this run has no adapter yet (it is written when training finishes or stops).{hint}",
                       path=str(run_dir))
    return run_dir / ADAPTER


class ChatBackend:
    """The chat backend process. `ready()` waits for the model to load; `ask()` yields the backend's events
    for one request (token ..., then done or error). `argv` replaces the real backend (tests use a stand-in
    that speaks the same protocol)."""

    def __init__(self, run_dir, checkpoint: str | None = None, argv: list | None = None):
        self.path = adapter_dir(run_dir, checkpoint) if argv is None else None
        cmd = argv or [sys.executable, "-m", "engine.torchside.chat", str(Path(run_dir).resolve())] + (
            ["--checkpoint", checkpoint] if checkpoint else [])
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, bufsize=1)
        self._next = 0
        self.info: dict = {}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self._log.seek(0)
            tail = [x for x in self._log.read().splitlines() if x.strip()][-3:]
            raise RuntimeError("the chat backend stopped" + (": " + " | ".join(tail) if tail else ""))
        try:
            return json.loads(line)
        except ValueError:  # a library printed to stdout: not an event, skip it
            return {}

    def ready(self) -> dict:
        while True:
            ev = self._read()
            if ev.get("event") == "ready":
                self.info = ev
                return ev
            if ev.get("event") == "error":
                raise BadInput(ev.get("message", "the chat backend could not load the model"))

    def ask(self, messages: list, adapter: bool = True, max_new_tokens: int = 256):
        self._next += 1
        rid = self._next
        self.proc.stdin.write(json.dumps({"id": rid, "messages": messages, "adapter": adapter,
                                          "max_new_tokens": max_new_tokens}) + "\n")
        self.proc.stdin.flush()
        while True:
            ev = self._read()
            if ev.get("id") != rid:
                continue
            yield ev
            if ev.get("event") in ("done", "error"):
                return

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a reply still generating: it would only be thrown away
                self.proc.kill()
        self._log.close()


def messages_for(prompt: str, system: str | None = None, history: list | None = None) -> list:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + list(history or []) + [{"role": "user", "content": prompt}]
