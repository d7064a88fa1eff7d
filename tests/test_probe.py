"""`rigtune probe` (engine.probe) and the store of what this machine measured (engine.calibration): a real probe of
the CPU demo, with out-of-memory trials injected through the trainer's fault seam; the model of random weights
it trains, against a real load; `plan` reading what the probe and a finished run measured."""
from __future__ import annotations

import json
import os
import statistics

import pytest

from conftest import ROOT, events, rigtune, run_file
from engine import calibration as K

FIVE = ("peak_gib", "tokens_per_s", "max_seq_len", "max_micro_batch", "measured_at")
DEMO_RUN_FILE = ROOT / "presets" / "cpu-demo.toml"


# ---------------------------------------------------------------------------- random weights of the real shape

def test_a_shape_folder_loads_as_random_weights_with_the_real_models_modules_and_quantization(tiny_model, tmp_path):
    import torch

    from engine import runfile
    from engine.modelref import SHAPE_MARK
    from engine.torchside.model import load_base
    shape = tmp_path / "shape"
    shape.mkdir()
    (shape / "config.json").write_text((tiny_model / "config.json").read_text())
    (shape / SHAPE_MARK).write_text("{}")
    cfg = runfile.load(run_file(tmp_path, tiny_model, ROOT / "presets" / "demo.jsonl"))
    real = load_base(cfg, "cpu")
    values = cfg.to_dict()
    values["model"]["base"] = str(shape)
    drawn = load_base(runfile.validate(values), "cpu")

    def described(model):
        out = {}
        for name, mod in model.named_modules():
            for pn, p in mod.named_parameters(recurse=False):
                qs = getattr(p, "quant_state", None)
                out[f"{name}.{pn}"] = (type(mod).__name__, type(p).__name__, tuple(p.shape), p.dtype, p.requires_grad,
                                       None if qs is None else (qs.blocksize, qs.dtype, qs.quant_type, qs.nested,
                                                                tuple(qs.shape)))
            for bn, b in mod.named_buffers(recurse=False):
                out[f"{name}.{bn}"] = (tuple(b.shape), b.dtype, b.device.type, b.tolist() if b.numel() < 64 else None)
        return out
    assert described(drawn) == described(real)
    four_bit = [n for n, v in described(real).items() if v[1] == "Params4bit"]
    assert four_bit and getattr(drawn, "is_loaded_in_4bit", False)
    assert not torch.equal(drawn.lm_head.weight, real.lm_head.weight)  # random, not the weights on disk
    ids = torch.randint(0, 100, (1, 12))
    assert torch.isfinite(drawn(ids).logits).all()


# ---------------------------------------------------------------------------- the probe, end to end

@pytest.fixture(scope="module")
def probed(demo_cache, tmp_path_factory):
    """`rigtune probe --json` on this CPU with the demo model (demo_cache), as on a card that runs out of
    memory above 512 tokens per micro-batch (RIGTUNE_PROBE_FAULT: the trainer's own fault seam, trial by trial)."""
    home = tmp_path_factory.mktemp("probe")
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache),
           "RIGTUNE_MEASURED": str(home / "measured.json"), "RIGTUNE_PROBE_FAULT": "oom_above@512"}
    res = rigtune("probe", DEMO_RUN_FILE, "--json", cwd=home, env=env, timeout=300)  # no GPU in it, on any box
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), env, home, res.stderr


def test_probe_measures_the_demo_and_finds_the_largest_settings_that_fit(probed):
    r, _, home, progress = probed
    assert (r["device"], r["seq_len"], r["micro_batch"], r["peak_is"]) == ("cpu", 128, 2, "process peak RSS")
    assert 0.1 < r["peak_gib"] < 16 and r["tokens_per_s"] > 0
    # above 512 tokens per micro-batch every trial ran out of memory, and recovered: the search went on after it
    assert (r["max_micro_batch"], r["max_seq_len"]) == (4, 256)
    fits = [t for t in r["trials"] if t["fits"]]
    failed = [t for t in r["trials"] if not t["fits"]]
    assert all(t["seq_len"] * t["micro_batch"] <= 512 for t in fits)
    assert failed and all(t["why"] == "out of memory" and t["seq_len"] * t["micro_batch"] > 512 for t in failed)
    assert r["trials"].index(failed[0]) < len(r["trials"]) - 1  # a trial after an out-of-memory one still ran
    assert {(t["seq_len"], t["micro_batch"]) for t in failed} == {(128, 8), (128, 6), (512, 2), (384, 2)}
    assert "micro_batch_size 6 did not fit (out of memory)" in r["limits"]["max_micro_batch"]
    assert r["machine"]["gpu"].startswith("CPU: ") and r["machine"]["torch"]
    assert "probe trial 1: max_seq_len 128, micro-batch 2: fits" in progress  # the progress lines, on stderr
    assert not list(home.rglob("trial-*"))  # the trials' run directories are gone


def test_plan_shows_what_the_probe_measured_interpolates_and_knows_what_ran_out(probed):
    r, env, home, _ = probed
    plan = json.loads(rigtune("plan", DEMO_RUN_FILE, "--json", env=env, cwd=home).stdout)
    assert {k: plan["measured"][k] for k in FIVE} == {k: r[k] for k in FIVE}
    assert plan["verdict"] == "fits" and plan["measured"]["interpolated"] is False
    assert plan["duration_s_estimate"] and any("measured on this box" in n for n in plan["notes"])
    text = rigtune("plan", DEMO_RUN_FILE, env=env, cwd=home).stdout
    assert f"measured on this box: peak RSS {r['peak_gib']:.2f} GiB (planned " in text
    assert "largest micro-batch at this length 4" in text
    # micro-batch 3 lies between the measured 2 and 4: its peak is interpolated between theirs
    trial = {(t["seq_len"], t["micro_batch"]): t for t in r["trials"]}
    three = json.loads(rigtune("plan", DEMO_RUN_FILE, "--json", "--micro-batch", "3", env=env, cwd=home).stdout)
    low, high = trial[(128, 2)]["peak_gib"], trial[(128, 4)]["peak_gib"]
    assert three["measured"]["interpolated"] is True
    assert three["measured"]["peak_gib"] == pytest.approx((low + high) / 2, abs=0.002)
    # micro-batch 8 ran out of memory: the plan says so, whatever the planner thinks of it
    eight = json.loads(rigtune("plan", DEMO_RUN_FILE, "--json", "--micro-batch", "8", env=env, cwd=home).stdout)
    assert eight["measured"] is None and eight["verdict"] == "does not fit"
    assert any("micro-batch 8 did not fit (out of memory" in n for n in eight["notes"])
    # another setting than the one probed (LoRA rank) was not measured: the planned figure alone
    other = json.loads(rigtune("plan", DEMO_RUN_FILE, "--json", "--lora-r", "8", env=env, cwd=home).stdout)
    assert other["measured"] is None


def test_a_finished_run_feeds_the_same_store(demo_run, demo_cache):
    """The demo run (its trainer, at the end) wrote its own peak and speed where the probe writes; plan reads them."""
    ev = events(demo_run)
    memory = next(e for e in ev if e["event"] == "memory")
    speeds = [e["tokens_per_s"] for e in ev if e["event"] == "step"]
    store = demo_run.parent.parent / "measured.json"  # the demo run's own store (conftest)
    records = json.loads(store.read_text())["records"]
    mine = [r for r in records if r["source"] == "run cpu-demo"]
    assert len(mine) == 1 and mine[0]["peak_gib"] == memory["peak_rss_gib"]
    assert mine[0]["tokens_per_s"] == pytest.approx(statistics.median(speeds[1:]), abs=0.2)
    env = {**os.environ, "RIGTUNE_CACHE": str(demo_cache), "RIGTUNE_MEASURED": str(store)}
    plan = json.loads(rigtune("plan", demo_run / "run.toml", "--json", env=env).stdout)
    assert plan["measured"]["peak_gib"] == memory["peak_rss_gib"] and plan["measured"]["source"] == "run cpu-demo"


# ---------------------------------------------------------------------------- the store

MACHINE = {"gpu": "NVIDIA GeForce RTX 4090", "driver": "550.54.14", "cuda": "12.4", "torch": "2.13.0",
           "rigtune": "0.1.0"}


def _points(*specs, settings=None) -> list:
    out = []
    for seq, mbs, peak in specs:
        r = K.record(MACHINE, "llama 32x4096 abc", settings or {"lora_r": 16}, seq, mbs, peak or 0, 1000.0 * mbs, "probe")
        out.append(r if peak else {**r, "peak_gib": None, "fits": False, "why": "out of memory"})
    return out


def test_measured_points_are_interpolated_in_tokens_never_extrapolated():
    recs = _points((1024, 1, 10.0), (2048, 1, 12.0), (4096, 1, None))
    at = lambda seq, mbs, **kw: K.measured(MACHINE, "llama 32x4096 abc", {"lora_r": 16}, seq, mbs, records=recs, **kw)
    assert at(1024, 1)["peak_gib"] == 10.0 and not at(1024, 1)["interpolated"]
    assert at(1536, 1)["peak_gib"] == 11.0 and at(1536, 1)["interpolated"]
    assert at(512, 2)["peak_gib"] == 10.0  # the same tokens per micro-batch as a measured point
    assert at(3000, 1) is None and at(512, 1) is None  # beyond the measured points: not guessed
    assert K.ran_out(MACHINE, "llama 32x4096 abc", {"lora_r": 16}, 8192, 2, records=recs)["seq_len"] == 4096
    assert K.ran_out(MACHINE, "llama 32x4096 abc", {"lora_r": 16}, 3000, 1, records=recs) is None
    # another driver, torch or setting is another machine or run: nothing measured for it
    assert K.measured({**MACHINE, "torch": "2.14.1"}, "llama 32x4096 abc", {"lora_r": 16}, 1024, 1, records=recs) is None
    assert K.measured(MACHINE, "llama 32x4096 abc", {"lora_r": 64}, 1024, 1, records=recs) is None


def test_the_store_keeps_one_figure_per_point_and_sets_a_damaged_file_aside(tmp_path, monkeypatch):
    store = tmp_path / "measured.json"
    monkeypatch.setenv("RIGTUNE_MEASURED", str(store))
    store.write_text("{not json")
    assert K.load() == []
    assert (tmp_path / "measured.json.unreadable").read_text() == "{not json"  # kept, not lost
    K.add(_points((1024, 1, 10.0)))
    K.add(_points((1024, 1, 10.5), (2048, 1, 12.0)))
    kept = K.load()
    assert sorted((r["seq_len"], r["peak_gib"]) for r in kept) == [(1024, 10.5), (2048, 12.0)]
    assert not list(tmp_path.glob(".measured.json.*.tmp"))


def test_the_same_shape_under_any_name_shares_its_measurements(tmp_path):
    from engine import planner as P
    catalog = P.resolve_model("Llama-3.1-8B")
    config = {"model_type": "llama", "num_hidden_layers": catalog.layers, "hidden_size": catalog.hidden,
              "intermediate_size": catalog.intermediate, "num_attention_heads": catalog.heads,
              "num_key_value_heads": catalog.kv_heads, "vocab_size": catalog.vocab, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert K.shape_id(P.resolve_model(str(tmp_path))) == K.shape_id(catalog)
    assert K.shape_id(P.resolve_model("Llama-3.1-70B")) != K.shape_id(catalog)


# ---------------------------------------------------------------------------- the wizard

async def test_p_in_the_wizard_probes_this_box_and_the_fit_meter_shows_what_it_measured(demo_cache, tmp_path,
                                                                                       monkeypatch):
    from test_wizard import RecordingLauncher, fixed_machine, to_setup
    from textual.widgets import Input

    from tui.app import RigtuneApp
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RIGTUNE_CACHE", str(demo_cache))  # the demo model, built
    monkeypatch.setenv("RIGTUNE_MEASURED", str(tmp_path / "measured.json"))
    monkeypatch.setenv("RIGTUNE_PROBE_FAULT", "oom_above@256")  # a box that fits only the demo's own settings
    app = RigtuneApp(wizard=True, machine=fixed_machine(), launcher=RecordingLauncher())
    async with app.run_test(size=(80, 24)) as pilot:
        setup = await to_setup(pilot)
        fit = setup.query_one("#fit")
        assert "p measures this box" in str(fit.render())
        data = app.focused
        assert isinstance(data, Input)
        path = data.value
        await pilot.press("end", "p")  # in a text field, p is a letter
        assert data.value == path + "p" and not setup.probing
        await pilot.press("backspace", "tab")
        assert not isinstance(app.focused, Input)
        await pilot.press("p")
        assert setup.probing
        for _ in range(1200):
            await pilot.pause(0.1)
            if not setup.probing:
                break
        shown = str(fit.render())
    assert "measured on this box: peak RSS" in shown and "tokens/s" in shown
    assert "longest seq 128, max micro-batch 2 (measured)" in shown
    stored = json.loads((tmp_path / "measured.json").read_text())["records"]
    assert {(r["seq_len"], r["micro_batch"], r.get("fits", True)) for r in stored} >= {(128, 2, True), (128, 4, False)}


def test_a_shape_folder_stays_in_the_cache_whatever_the_config_says(tmp_path, monkeypatch):
    """The shape folder is named after config.json's model_type, which a hub supplies: a hostile one cannot
    lead the probe's writes out of rigtune's cache."""
    from engine import probe as PR
    from engine import runfile
    monkeypatch.setenv("RIGTUNE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "../../../escaped", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 400}))
    values = runfile.defaults(name="x", model={"base": str(model)}, data={"path": "d.jsonl"})
    _, folder = PR.shape_folder(runfile.validate(values), progress=lambda *a: None)
    assert folder.resolve().parent == (tmp_path / "cache" / "shapes").resolve()
    assert not (tmp_path / "escaped").exists() and "/" not in folder.name and ".." not in folder.name
