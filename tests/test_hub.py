"""Plans from a hub id, `rigtune fetch` and training from a hub id, against a real local HTTP server that speaks
the Hugging Face Hub's API (tests/hubserver.py), reached through HF_ENDPOINT. Nothing leaves this machine."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import events, rigtune, run_file
from tests.hubserver import HubServer

REPO, GATED, MISSING = "tiny-org/tiny-llama", "tiny-org/gated-llama", "tiny-org/no-such-model"


@pytest.fixture
def hub(tiny_model, tmp_path):
    server = HubServer()
    server.add(REPO, tiny_model)
    server.add(GATED, tiny_model, gated=True)
    server.start()
    yield server
    server.stop()


def env_for(server: HubServer, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_XET="1", **extra)
    return env


def snapshot_of(tmp_path: Path, server: HubServer, repo: str = REPO) -> Path:
    return tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / server.repos[repo].commit


def test_plan_from_a_hub_id(hub, tiny_model, tmp_path):
    env = env_for(hub, tmp_path)
    res = rigtune("plan", "--model", REPO, "--gpus", "1x24", "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    config = json.loads((tiny_model / "config.json").read_text())
    assert out["arch"] == config["model_type"] == "llama"
    from safetensors.torch import load_file
    real = sum(t.numel() for t in load_file(str(tiny_model / "model.safetensors")).values())
    assert out["params_b"] == pytest.approx(real / 1e9, rel=0.001)
    assert out["active_params_b"] == out["params_b"]
    weights = (tiny_model / "model.safetensors").stat().st_size
    assert out["download_gib"] == pytest.approx(weights / 2**30, rel=0.001)
    asked = {p for m, p, _ in hub.requests}
    assert f"/api/models/{REPO}" in asked and f"/{REPO}/resolve/main/config.json" in asked
    listings = [p for m, p, _ in hub.requests if p.startswith(f"/api/models/{REPO}")]
    assert len(listings) == 1, listings  # one model_info serves the probe and the weights' size
    assert not any(p.endswith(".safetensors") for m, p, _ in hub.requests if m == "GET"), "a plan downloads no weights"
    # offline, the cached config.json plans the same
    res = rigtune("plan", "--model", REPO, "--gpus", "1x24", "--json", env={**env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["params_b"] == out["params_b"]


def test_gated_missing_and_offline_are_one_clear_paragraph(hub, tmp_path):
    env = env_for(hub, tmp_path)
    res = rigtune("plan", "--model", GATED, "--gpus", "1x24", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "gated" in res.stderr and f"{hub.url}/{GATED}" in res.stderr
    assert "hf auth login" in res.stderr and "HF_TOKEN" in res.stderr
    res = rigtune("plan", "--model", GATED, "--gpus", "1x24", "--json", env={**env, "HF_TOKEN": hub.token})
    assert res.returncode == 0, res.stderr  # with access granted, the same id plans
    res = rigtune("plan", "--model", MISSING, "--gpus", "1x24", env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{MISSING} was not found on {hub.url}" in res.stderr
    res = rigtune("fetch", MISSING, env=env)
    assert res.returncode == 2 and "was not found" in res.stderr
    res = rigtune("plan", "--model", "tiny-org/never-fetched", "--gpus", "1x24", env={**env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "HF_HUB_OFFLINE is set" in res.stderr and "rigtune fetch tiny-org/never-fetched" in res.stderr
    res = rigtune("fetch", GATED, env=env)
    assert res.returncode == 2 and "gated" in res.stderr
    assert not any(p.endswith(".safetensors") for m, p, _ in hub.requests if m == "GET")


def test_fetch_shows_progress_and_leaves_a_cache_transformers_loads_offline(hub, tiny_model, tmp_path):
    env = env_for(hub, tmp_path)
    res = rigtune("fetch", REPO, env=env)
    assert res.returncode == 0, res.stderr
    assert "100%" in res.stderr and "MB/s" in res.stderr and "files)" in res.stderr
    snap = snapshot_of(tmp_path, hub)
    assert (snap / "model.safetensors").is_symlink()
    assert (snap / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert not (snap / ".rigtune-built").exists()  # hidden files are not part of a model
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            f"m = AutoModelForCausalLM.from_pretrained({REPO!r}); t = AutoTokenizer.from_pretrained({REPO!r}); "
            "print(sum(p.numel() for p in m.parameters()), len(t))")
    loaded = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    # a second fetch finds everything there: no file is transferred again
    before = len(hub.requests)
    res = rigtune("fetch", REPO, env=env)
    assert res.returncode == 0 and "(0.00 GiB to download)" in res.stderr
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]]
    # offline, fetch answers from the cache
    res = rigtune("fetch", REPO, env={**env, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0 and str(snap) in res.stdout


def test_a_download_cut_off_resumes_where_it_stopped(hub, tiny_model, tmp_path):
    from engine.hub import RETRIES
    env = env_for(hub, tmp_path)
    size = (tiny_model / "model.safetensors").stat().st_size
    piece = size // 10
    # the connection drops after `piece` bytes on every try: rigtune retries RETRIES times, then gives up
    hub.cut["model.safetensors"] = (piece, RETRIES + 1)
    res = rigtune("fetch", REPO, env=env, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "cut off in model.safetensors" in res.stderr and "run the same command again to resume" in res.stderr
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == [None] + [f"bytes={piece * k}-" for k in range(1, RETRIES + 1)]  # each retry went on
    blobs = tmp_path / "hf" / "hub" / ("models--" + REPO.replace("/", "--")) / "blobs"
    parts = list(blobs.glob("*.rigtune-part"))
    assert len(parts) == 1 and parts[0].stat().st_size == piece * (RETRIES + 1)
    # the network is back: the next fetch asks only for the rest, and the file checks out
    res = rigtune("fetch", REPO, env=env)
    assert res.returncode == 0, res.stderr
    last = [r for m, p, r in hub.requests if m == "GET" and p.endswith("model.safetensors")][-1]
    assert last == f"bytes={piece * (RETRIES + 1)}-"
    got = (snapshot_of(tmp_path, hub) / "model.safetensors").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert not list(blobs.glob("*.rigtune-part"))


def test_fetch_refuses_a_download_the_disk_cannot_hold(hub, tmp_path):
    import shutil
    hf = tmp_path / "hf"
    hf.mkdir()
    free = shutil.disk_usage(hf).free
    hub.repos[REPO].claimed["model.safetensors"] = free + (3 << 30)  # the listing says: more than this disk has
    res = rigtune("fetch", REPO, env=env_for(hub, tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "only" in res.stderr and "GiB is free" in res.stderr and "HF_HOME" in res.stderr
    assert not [r for r in hub.requests if r[0] == "GET" and r[1].endswith(".safetensors")], "nothing was downloaded"


def test_train_from_a_hub_id_downloads_first_with_download_events(hub, tmp_path):
    env = env_for(hub, tmp_path)
    from tests.conftest import DEMO
    path = run_file(tmp_path, REPO, DEMO, name="hubrun", train={"max_steps": 2, "eval_every_steps": 0,
                                                                  "save_every_steps": 0, "sample_max_new_tokens": 0})
    res = rigtune("train", path, "--no-tui", env=env, timeout=600)
    assert res.returncode == 0, res.stderr + res.stdout
    evs = events(tmp_path / "runs" / "hubrun")
    downloads = [e for e in evs if e["event"] == "download"]
    assert downloads and downloads[-1]["bytes_done"] == downloads[-1]["bytes_total"] > 0
    assert downloads[-1]["files_done"] == downloads[-1]["files_total"]
    kinds = [e["event"] for e in evs]
    assert kinds.index("download") < kinds.index("start")  # the download comes before the trainer starts
    assert evs[-1]["event"] == "end" and evs[-1]["reason"] == "finished"
    assert "download" in res.stdout  # --no-tui shows it as lines
    start = next(e for e in evs if e["event"] == "start")
    assert start["model"] == REPO  # the run names the hub id, not the cache folder
