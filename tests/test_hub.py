"""Plans from a hub id, `rigtune fetch` and training from a hub id, against a real local HTTP server that speaks
the Hugging Face Hub's API (tests/hubserver.py), reached through HF_ENDPOINT. Nothing leaves this machine."""
from __future__ import annotations

import hashlib
import json
import os
import re
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
    commit = hub.repos[REPO].commit  # config.json at the listing's commit, through the checked download
    assert f"/api/models/{REPO}" in asked and f"/{REPO}/resolve/{commit}/config.json" in asked
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


# ---------------------------------------------------------------------------- a broken or hostile endpoint
# HF_ENDPOINT may point at a mirror that answers anything: its commit, etags and file names become paths in the
# cache, so each must be refused unless it is what the hub would send, and nothing may land outside the cache.

ESCAPE = "../../../../escaped"  # from the cache's snapshots/ or blobs/, four levels up is the test's tmp_path


def cache_of(tmp_path: Path, repo: str = REPO) -> Path:
    return tmp_path / "hf" / "hub" / ("models--" + repo.replace("/", "--"))


def outside_cache(tmp_path: Path, repo: str = REPO) -> list:
    """Whatever exists under tmp_path that is neither the repository's cache folder (or inside it) nor one of the
    folders above it, and every link in the tree whose target lies outside the cache folder."""
    cache = cache_of(tmp_path, repo)
    allowed = {tmp_path, *[p for p in cache.parents if tmp_path in p.parents]}
    found = []
    for top, dirs, files in os.walk(tmp_path):
        for name in dirs + files:
            p = Path(top) / name
            if p.is_symlink() and cache not in Path(os.path.realpath(p)).parents:
                found.append(f"{p} -> {os.readlink(p)}")
            if p != cache and cache not in p.parents and p not in allowed:
                found.append(str(p))
    return found


def fetched_nothing(server: HubServer) -> bool:
    return not [r for r in server.requests if r[0] == "GET" and "/resolve/" in r[1]]


@pytest.mark.parametrize("where", ["sha", "lfs.sha256", "blobId", "ETag", "X-Linked-Etag", "name with ..",
                                   "name with a backslash"])
def test_a_hostile_listing_is_refused_and_nothing_is_written_outside_the_cache(hub, tmp_path, where):
    repo = hub.repos[REPO]
    if where == "sha":
        repo.sha = ESCAPE
        said = f"answered the commit of {REPO} as '{ESCAPE}', which is not a 40-digit hex hash"
    elif where == "lfs.sha256":
        repo.patch["model.safetensors"] = {"lfs.sha256": ESCAPE}
        said = f"answered the lfs.sha256 of {REPO}/model.safetensors as '{ESCAPE}', which is not a 64-digit hex hash"
    elif where == "blobId":
        repo.patch["config.json"] = {"blobId": ESCAPE}
        said = f"answered the blobId of {REPO}/config.json as '{ESCAPE}', which is not a 40 or 64-digit hex hash"
    elif where in ("ETag", "X-Linked-Etag"):  # no blob ids in the listing: the etags come from the headers
        repo.blob_ids = False
        name = "config.json" if where == "ETag" else "model.safetensors"
        repo.header_etag[name] = ESCAPE
        said = f"answered the ETag / X-Linked-Etag of {REPO}/{name} as '{ESCAPE}', which is not a "
    else:
        bad = ESCAPE + "/model.safetensors" if where == "name with .." else "..\\..\\escaped.json"
        repo.extra.append(bad)
        said = (f"listed a file of {REPO} named {bad!r}: rigtune writes no file whose name is an absolute path or "
                "has a '..' part or a backslash")
    res = rigtune("fetch", REPO, env=env_for(hub, tmp_path), timeout=120)
    assert outside_cache(tmp_path) == []
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"rigtune: {hub.url} {said}" in res.stderr, res.stderr
    assert "HF_ENDPOINT may point at a broken or hostile mirror" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one paragraph: the error line alone
    assert fetched_nothing(hub), "refused before the first byte"
    assert not cache_of(tmp_path).exists()


def test_planning_a_hub_id_fetches_its_config_through_the_checked_download(hub, tmp_path):
    """`rigtune plan --model ID` (and the wizard's model field) fetch config.json: through rigtune's own checked
    download, so a hostile ETag on it is refused and nothing lands outside the cache (huggingface_hub's
    hf_hub_download named the blob after it unchecked and wrote four levels up); a good one plans."""
    repo = hub.repos[REPO]
    repo.blob_ids = False
    repo.header_etag["config.json"] = ESCAPE
    res = rigtune("plan", "--model", REPO, "--gpus", "1x24", env=env_for(hub, tmp_path), timeout=120)
    assert outside_cache(tmp_path) == []
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"answered the ETag / X-Linked-Etag of {REPO}/config.json as '{ESCAPE}'" in res.stderr, res.stderr
    del repo.header_etag["config.json"]
    res = rigtune("plan", "--model", REPO, "--gpus", "1x24", "--json", env=env_for(hub, tmp_path), timeout=120)
    assert res.returncode == 0, res.stderr
    assert (snapshot_of(tmp_path, hub) / "config.json").is_file() and outside_cache(tmp_path) == []


def test_a_listing_without_blob_ids_takes_each_etag_and_size_from_the_files_headers(hub, tiny_model, tmp_path):
    hub.repos[REPO].blob_ids = False  # names only, as a mirror that ignores ?blobs=true answers
    code = ("import dataclasses, json, sys; from engine import hub; lst = hub.listing(sys.argv[1]); seen = []; "
            "snap = hub.download(sys.argv[1], on_progress=seen.append, every_s=0, lst=lst); "
            "print(json.dumps({'snap': str(snap), 'files': [dataclasses.asdict(f) for f in lst.files], "
            "'first': dataclasses.asdict(seen[0]), 'last': dataclasses.asdict(seen[-1])}))")
    res = subprocess.run([sys.executable, "-c", code, REPO], env=env_for(hub, tmp_path), capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    real = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file() and not p.name.startswith(".")}
    listed = {f["name"]: f for f in out["files"]}
    assert set(listed) == set(real)
    for name, data in real.items():
        f = listed[name]
        assert f["size"] == len(data)
        if name.endswith(".safetensors"):  # X-Linked-Etag: the sha256 of the file
            assert f["lfs"] and f["etag"] == hashlib.sha256(data).hexdigest()
        else:  # ETag: the git blob id
            assert not f["lfs"] and f["etag"] == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    total = sum(len(d) for d in real.values())
    assert out["first"]["bytes_total"] == out["last"]["bytes_total"] == out["last"]["bytes_done"] == total
    assert out["first"]["bytes_done"] == 0 and out["last"]["files_done"] == out["last"]["files_total"] == len(real)
    snap = Path(out["snap"])
    assert snap == snapshot_of(tmp_path, hub)
    for name, data in real.items():
        assert (snap / name).is_symlink() and (snap / name).is_file() and (snap / name).read_bytes() == data
    assert [m for m, p, _ in hub.requests if m == "HEAD"], "the etags were asked of the files themselves"
    assert outside_cache(tmp_path) == []


@pytest.mark.parametrize("served", ["one byte changed", "longer than listed"])
def test_bytes_that_do_not_match_the_listing_are_deleted_and_nothing_is_linked(hub, tiny_model, tmp_path, served):
    data = (tiny_model / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    changed = data[:-1] + bytes([data[-1] ^ 1]) if served == "one byte changed" else data + b"\0" * 5000
    hub.repos[REPO].served["model.safetensors"] = changed
    env = env_for(hub, tmp_path)
    res = rigtune("fetch", REPO, env=env, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    found = (f"sha256 {hashlib.sha256(changed).hexdigest()[:12]}..." if served == "one byte changed"
             else f"more than the {len(data)} bytes the listing says")
    assert (f"model.safetensors of {REPO} from {hub.url} does not match its sha256 {sha[:12]}... ({found}); the file "
            "was deleted and nothing was put in the cache for it") in res.stderr, res.stderr
    cache = cache_of(tmp_path)
    assert not [p.name for p in (cache / "blobs").iterdir() if p.name.startswith(sha)]  # no blob, part, or .bad
    assert not (cache / "snapshots").exists() and not (cache / "refs").exists()  # nothing linked, no ref
    assert outside_cache(tmp_path) == []
    # the endpoint mends its ways: the next fetch gets the right file
    del hub.repos[REPO].served["model.safetensors"]
    res = rigtune("fetch", REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (snapshot_of(tmp_path, hub) / "model.safetensors").read_bytes() == data


def test_a_server_that_ignores_range_still_gives_the_right_file(hub, tiny_model, tmp_path):
    data = (tiny_model / "model.safetensors").read_bytes()
    piece = len(data) // 3
    hub.cut["model.safetensors"] = (piece, 1)  # the first try is cut off after `piece` bytes...
    hub.ignore_range = True                     # ...and the resumed request is answered 200, with the whole file
    res = rigtune("fetch", REPO, env=env_for(hub, tmp_path), timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == [None, f"bytes={piece}-"]
    got = snapshot_of(tmp_path, hub) / "model.safetensors"
    assert got.read_bytes() == data  # not the whole file appended to the first third
    percents = [int(p) for p in re.findall(r"(\d+)%", res.stderr)]
    assert percents and max(percents) == 100 and percents[-1] == 100  # the progress never passed the total
    assert not list((cache_of(tmp_path) / "blobs").glob("*" + ".rigtune-part*"))
    assert outside_cache(tmp_path) == []


def test_a_cached_snapshot_is_found_only_through_a_hex_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from engine import hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    cache = cache_of(tmp_path)
    commit = "0123456789abcdef0123456789abcdef01234567"
    for snap in (cache / "snapshots" / commit, tmp_path / "escaped"):  # a good snapshot, and one outside the cache
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        (snap / "model.safetensors").write_bytes(b"x")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    assert hub.cached_snapshot(REPO) == cache / "snapshots" / commit
    assert hub.cached_snapshot(REPO, commit) == cache / "snapshots" / commit
    (cache / "refs" / "main").write_text(ESCAPE)  # a ref rewritten to lead out of the cache is not followed
    assert hub.cached_snapshot(REPO) is None
    assert hub.cached_snapshot(REPO, ESCAPE) is None
    assert hub.cached_snapshot(REPO, "../../../../../escaped") is None
