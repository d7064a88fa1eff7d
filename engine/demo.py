"""The CPU demo's model: a tiny local model pretrained on general questions and answers as plain text
(presets.make_demo_data.general_texts). It has never seen a chat turn and knows nothing about the persona the
demo's fine-tune teaches it (presets/demo.jsonl), which is what the held-out check at the end shows.

It is built once into the cache. Building needs torch, so it runs in its own process on the torch side
(engine.torchside.tiny); this module only knows where the model lives and asks for it to be built.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO_MODEL_VERSION = 3
BUILT_MARK = "rigtune-tiny.json"


def cache_dir() -> Path:
    return Path(os.environ.get("RIGTUNE_CACHE", Path.home() / ".cache" / "rigtune"))


def demo_model_dir() -> Path:
    return cache_dir() / f"tiny-demo-v{DEMO_MODEL_VERSION}"


def demo_model(log=print) -> Path:
    """The demo model's folder, built and cached on first use (about 20 s on two cores)."""
    out = demo_model_dir()
    if (out / BUILT_MARK).exists():
        return out
    log(f"building the demo model in {out} (once, about 20 s)...")
    res = subprocess.run([sys.executable, "-m", "engine.torchside.tiny", "demo", str(out)], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0 or not (out / BUILT_MARK).exists():
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"building the demo model in {out} failed: {tail[0]}")
    return out

