"""The CPU demo: a tiny local model that has read the demo dataset as plain "Question: ... Answer: ..." text
but has never seen a chat turn. The LoRA fine-tune teaches it to answer in the chat format, which shows in the
eval sample within a minute on two CPU cores."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from presets import DEMO_DATA

from .tiny import build_model, cache_dir, pretrain

DEMO_MODEL_VERSION = 2


def demo_records() -> list:
    return [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def demo_model(log=print) -> Path:
    """The demo model's folder, built and cached on first use (about 20 s on two cores)."""
    out = cache_dir() / f"tiny-demo-v{DEMO_MODEL_VERSION}"
    if (out / "rigtune-tiny.json").exists():
        return out
    log(f"building the demo model in {out} (once, about 30 s)...")
    rows = demo_records()
    tmp = out.with_name(out.name + f".build{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_model(tmp, [r["instruction"] + " " + r["output"] for r in rows])
    pretrain(tmp, [f"Question: {r['instruction']}\nAnswer: {r['output']}" for r in rows], steps=300)
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
