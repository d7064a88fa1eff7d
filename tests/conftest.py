"""Shared fixtures: a tiny Llama-architecture model and BPE tokenizer built locally once per session, and
helpers to write run files and run the `rigtune` command. Nothing is downloaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "tests" / "profiles"
PEER = ROOT.parent / "shared" / "peer-data"
DEMO = ROOT / "presets" / "demo.jsonl"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")  # snapshots must not depend on animation timing
# what the suite's training runs measure stays out of this machine's store (engine.calibration): one per process
os.environ.setdefault("RIGTUNE_MEASURED", os.path.join(tempfile.mkdtemp(prefix="rigtune-measured-"), "measured.json"))


def peer(name: str) -> Path:
    path = PEER / name
    if not path.exists():
        pytest.skip(f"peer data {path} not present")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from engine.torchside.tiny import build_model
    texts = [json.loads(line)["output"] for line in DEMO.read_text().splitlines()]
    if PEER.exists():
        texts += [r["output"] for r in json.loads((PEER / "alpaca_en_demo.json").read_text())[:200]]
    return build_model(tmp_path_factory.mktemp("models") / "tiny", texts, vocab_size=400, hidden=64, layers=2,
                       heads=4, kv_heads=2, intermediate=128)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group from the marker
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs the suite on both cores), every test that reads the trained demo run
    is sent to one worker, so that the demo trains once per run, as it does without xdist."""
    for item in items:
        if "demo_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("demo"))


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A rigtune cache (RIGTUNE_CACHE) holding the built demo model, once per test process (about 20 s): for tests
    that need the model but not the trained demo run, so that they need not wait for it on one worker."""
    cache = tmp_path_factory.mktemp("democache")
    res = subprocess.run([sys.executable, "-c", "from engine.demo import demo_model; demo_model(lambda *a: None)"],
                         cwd=ROOT, env={**os.environ, "RIGTUNE_CACHE": str(cache)}, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    return cache


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_cache) -> Path:
    """The CPU demo, trained once per test session (about a minute): a real adapter to chat with and export. Its
    cache is demo_cache (RIGTUNE_CACHE), where the demo model is already built."""
    home = tmp_path_factory.mktemp("demo")
    # its measured peak and speed go to a store of its own (engine.calibration), which no later run replaces
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache), "RIGTUNE_MEASURED": str(home / "measured.json")}
    res = rigtune("demo", "--no-tui", cwd=home, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    (home / "demo.out").write_text(res.stdout)  # what `rigtune demo --no-tui` printed, for the acceptance test
    return home / "runs" / "cpu-demo"


def held_out(run: Path) -> dict:
    """{question: sample} from the final eval of a finished demo run: what the trainer itself generated for each
    held-out question, whether it was right, and the words a right answer contains. Tests ask the questions the
    fine-tune answered right (its own record), not a fixed one: which of the eight a run learns can vary with the
    library versions, so a single hard-coded answer would fail for reasons that are not the feature's."""
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = [e for e in events if e["event"] == "eval" and "samples" in e][-1]
    return {s["question"]: s for s in final["samples"]}


def fake_hub_cache(cache: Path, model: Path, repo: str = "tiny-org/demo") -> dict:
    """A Hugging Face cache at `cache` (for HF_HUB_CACHE) holding the model folder `model` under the hub id `repo`
    at two revisions, main and v2, told apart by a mark in config.json ("rigtune_test_snapshot": the ref).
    Returns {ref: commit}."""
    import shutil
    folder = cache / ("models--" + repo.replace("/", "--"))
    commits = {"main": "a" * 40, "v2": "b" * 40}
    for ref, commit in commits.items():
        snap = folder / "snapshots" / commit
        shutil.copytree(model, snap)
        config = json.loads((snap / "config.json").read_text())
        (snap / "config.json").write_text(json.dumps({**config, "rigtune_test_snapshot": ref}))
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return commits


def on_hub_base(demo_run: Path, run: Path, revision: str, repo: str = "tiny-org/demo") -> Path:
    """A copy of the demo run at `run` (its adapter and run file) whose base is the hub id `repo` at `revision`."""
    import shutil

    from engine import runfile
    run.mkdir()
    shutil.copytree(demo_run / "adapter", run / "adapter")
    values = runfile.load(demo_run / "run.toml").to_dict()
    values["model"].update(base=repo, revision=revision)
    runfile.save(values, run / "run.toml")
    return run


def run_file(tmp_path: Path, base: Path, dataset, name="t", **sections) -> Path:
    """Write a small run file; `sections` maps a section to overrides, e.g. train={"max_steps": 4}."""
    from engine import runfile
    values = runfile.defaults(
        name=name, output_root=str(tmp_path / "runs"),
        model={"base": str(base), "compute_dtype": "float32"},
        data={"path": str(dataset), "max_seq_len": 96, "eval_fraction": 0.05},
        train={"micro_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 6, "learning_rate": 3e-3,
               "eval_every_steps": 3, "save_every_steps": 3, "gradient_checkpointing": False,
               "sample_max_new_tokens": 8, "warmup_ratio": 0.0})
    for section, overrides in sections.items():
        if isinstance(overrides, dict):
            values[section].update(overrides)
        else:
            values[section] = overrides
    path = tmp_path / f"{name}.toml"
    runfile.save(values, path)
    return path


def machine_env(profile: str) -> dict:
    """The environment for a `rigtune` process that sees a hand-made machine (tests/profiles/PROFILE.json)
    instead of this one's GPUs: tests that need a fact about the machine say which machine."""
    return {**os.environ, "RIGTUNE_FAKE_NVML": str(PROFILES / f"{profile}.json")}


def rigtune(*args, cwd=None, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui.cli", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def events(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def small_slice(tmp_path: Path, name: str, n: int) -> Path:
    """The first n records of a peer-data file, in its own format."""
    src = peer(name)
    out = tmp_path / name
    if src.suffix == ".jsonl":
        out.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    else:
        out.write_text(json.dumps(json.loads(src.read_text())[:n]))
    return out
