"""Energy and cost of a run: the meter against a faked NVML (an energy counter, or only power) and a fake powercap
tree (a real folder laid out like /sys/class/powercap, wraparound included); the account carried across --resume;
the cloud estimate; and one short training run on a faked GPU whose step events, final event and dashboard must
show the energy and cost the profile's counter implies."""
import json
import os
import time

import pytest

from conftest import DEMO, PROFILES, events, rigtune, run_file
from engine import cost
from engine import energy as E
from engine import planner as P
from engine import runfile
from engine.fakenvml import FakeNvml, NVMLError

MJ_PER_KWH = 3.6e9


def gpu(name="NVIDIA GeForce RTX 4090", **extra) -> dict:
    return {"driver": "550.54.14", "cuda": 12040, "gpus": [{"name": name, "memory_total_mib": 24564, "cc": [8, 9],
                                                            "bus_id": "00000000:01:00.0", **extra}]}


def zone(root, name, kind, uj, max_uj=262_143_328_850):
    """One powercap zone folder, as the intel_rapl driver lays it out."""
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(kind + "\n")
    (z / "energy_uj").write_text(f"{uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---------------------------------------------------------------------------- the meter

def test_gpu_energy_from_the_nvml_energy_counter(tmp_path):
    first, later = 40_000_000, 40_000_000 + 9_000_000  # millijoules since the driver loaded
    nvml = FakeNvml(gpu(energy_mj=[first, first + 1_800_000, later]))
    meter = E.Meter([0], nvml=nvml, powercap=tmp_path / "absent", sample_every=None).start()
    assert meter.read().gpu_kwh == pytest.approx(1_800_000 / MJ_PER_KWH)
    r = meter.read()  # the counter's last reading repeats from here on
    assert r.gpu_kwh == pytest.approx((later - first) / MJ_PER_KWH) and r.kwh == r.gpu_kwh
    assert r.gpu_method == "NVML energy counter (GPU 0)" and r.covers == "GPU"
    assert r.cpu_kwh is None and r.not_measured == f"no CPU energy: no RAPL energy counter ({tmp_path / 'absent'} not present)"
    assert meter.gpu_names == ["NVIDIA GeForce RTX 4090"]


def test_a_board_without_the_counter_is_metered_by_integrating_its_power(tmp_path):
    profile = gpu(power_w=300)
    with pytest.raises(NVMLError, match="Not Supported"):  # like a real pre-Volta board
        FakeNvml(profile).nvmlDeviceGetTotalEnergyConsumption(0)
    nvml, clock = FakeNvml(profile), Clock()
    meter = E.Meter([0], nvml=nvml, powercap=tmp_path, sample_every=None, clock=clock).start()
    for _ in range(10):  # 10 s at 300 W
        clock.t += 1.0
        meter.poll()
    nvml.gpus[0]["power_w"] = 100  # then 4 s from 300 W down to 100 W and on at 100 W: trapezoids
    clock.t += 2.0
    meter.poll()
    clock.t += 2.0
    r = meter.read()
    assert r.gpu_kwh == pytest.approx((300 * 10 + (300 + 100) / 2 * 2 + 100 * 2) / 3.6e6)
    assert r.gpu_method == "NVML power sampled every 1 s (GPU 0)"


def test_gpu_energy_not_measured_when_nvml_cannot_read_the_gpus(tmp_path):
    meter = E.Meter([0], nvml=FakeNvml({"fail_init": "Driver Not Loaded", "gpus": []}), powercap=tmp_path,
                    sample_every=None).start()
    r = meter.read()
    assert r.kwh is None and r.covers == "" and "Driver Not Loaded" in r.not_measured
    assert E.energy_words(r.kwh, None, r.covers) == "energy: not measured"


def test_cpu_energy_from_rapl_package_zones_through_a_wraparound(tmp_path):
    root = tmp_path / "powercap"
    top = 1_000_000_000
    pkg0 = zone(root, "intel-rapl:0", "package-0", top - 1_000_000, max_uj=top)
    pkg1 = zone(root, "intel-rapl:1", "package-1", 5_000_000)
    core = zone(root, "intel-rapl:0:0", "core", 7)               # a sub-zone of package 0: counted in it already
    psys = zone(root, "intel-rapl:2", "psys", 10)                # the whole platform on some laptops: package again
    mmio = zone(root, "intel-rapl-mmio:0", "package-0", 10)      # the same package through MMIO
    meter = E.Meter([], powercap=root, sample_every=None).start()
    (pkg0 / "energy_uj").write_text("1000000\n")                 # wrapped: 1,000,000 up to the top, 1,000,000 after
    (pkg1 / "energy_uj").write_text("8000000\n")
    for z in (core, psys, mmio):
        (z / "energy_uj").write_text("900000000\n")
    r = meter.read()
    assert r.cpu_kwh == pytest.approx((2_000_000 + 3_000_000) / 1e6 / 3.6e6)
    assert r.cpu_method == "RAPL package energy (2 packages)" and r.covers == "CPU"
    assert r.gpu_kwh is None and r.not_measured is None  # a CPU run has no GPU part to miss
    (pkg0 / "energy_uj").write_text("3000000\n")
    assert meter.read().cpu_kwh == pytest.approx(7_000_000 / 1e6 / 3.6e6)


def test_rapl_that_only_root_may_read_is_not_measured(tmp_path, monkeypatch):
    zone(tmp_path, "intel-rapl:0", "package-0", 1)

    def denied(zone):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(E, "_Rapl", denied)
    r = E.Meter([], powercap=tmp_path, sample_every=None).start().read()
    assert r.kwh is None and r.not_measured == f"no CPU energy: RAPL energy counters in {tmp_path} not readable (only root may read them here)"
    assert E.rapl_zones(tmp_path / "nothing")[1].startswith("no RAPL energy counter")


def test_the_sampling_thread_integrates_power_on_its_own(tmp_path):
    meter = E.Meter([0], nvml=FakeNvml(gpu(power_w=250)), powercap=tmp_path, sample_every=0.02).start()
    try:
        time.sleep(0.3)
        joules = meter._gpu[0].joules  # what the thread added up, before read() polls once more
    finally:
        meter.stop()
    assert 250 * 0.15 < joules < 250 * 0.6


# ---------------------------------------------------------------------------- the run's account

def test_energy_and_tokens_carry_across_a_resume_and_cost_the_price(tmp_path):
    nvml = FakeNvml(gpu(energy_mj=[0, 360_000_000]))  # 0.1 kWh in this process
    run = E.RunEnergy(0.25, E.Meter([0], nvml=nvml, powercap=tmp_path, sample_every=None).start())
    run.restore({"gpu_kwh": 0.5, "cpu_kwh": None, "tokens": 1000})  # what the checkpoint it resumes recorded
    run.count(300)
    assert run.step_fields() == {"energy_kwh": pytest.approx(0.6), "cost_usd": pytest.approx(0.15)}
    assert run.state() == {"gpu_kwh": pytest.approx(0.6), "cpu_kwh": None, "tokens": 1300}
    old = E.RunEnergy(0.25, E.Meter([0], nvml=FakeNvml(gpu(energy_mj=[0, 360_000_000])), powercap=tmp_path,
                                    sample_every=None).start())
    old.restore(None)  # a checkpoint written before energy was metered: the whole run's energy is not known
    assert old.step_fields() == {} and E.EARLIER in old.reading().not_measured and old.total_tokens is None


def test_the_final_event_prices_the_same_tokens_on_a_rented_card(tmp_path):
    arch = P.resolve_model("Llama-3.1-8B")
    cfg = runfile.validate(runfile.defaults(model={"base": "Llama-3.1-8B"}, data={"path": "d"}, hardware={"gpus": [0]},
                                            run={"electricity_usd_per_kwh": 0.2}))
    run = E.RunEnergy(0.2, E.Meter([0], nvml=FakeNvml(gpu("NVIDIA H100 80GB HBM3", energy_mj=[0, 1.8e9])),
                                   powercap=tmp_path, sample_every=None).start())
    run.count(5_000_000)
    final = run.final(cfg, arch, elapsed_s=1800)
    h100 = P.load_cards()["H100 80GB"]
    speed = P.tokens_per_s(cost.rented_input(cfg, arch, h100, 1), h100)
    assert final["energy_kwh"] == pytest.approx(0.5) and final["cost_usd"] == pytest.approx(0.1)
    assert final["cloud_card"] == "H100 80GB" and final["cloud_usd_per_hour"] == 2.69  # its own card, rented
    assert final["cloud_usd_estimate"] == pytest.approx(5_000_000 / speed / 3600 * 2.69, rel=1e-5)
    assert final["tokens"] == 5_000_000 and final["hours"] == 0.5 and final["cloud_price_date"]
    # a card with no rental price (RTX A6000) and a CPU run are priced on the documented default
    assert cost.rented_card("NVIDIA RTX A6000").name == cost.rented_card(None).name == cost.CLOUD_DEFAULT_CARD
    cpu = runfile.validate(runfile.defaults(model={"base": "Llama-3.1-8B"}, data={"path": "d"}))
    assert cost.cloud_estimate(cpu, arch, 1000)["cloud_cards"] == 1
    assert cost.cloud_estimate(cpu, None, 1000)["cloud_usd_estimate"] is None


def test_every_rental_price_has_an_offer_a_source_and_a_date():
    cards = P.load_cards()
    priced = {n for n, c in cards.items() if c.rent_usd_per_hour is not None}
    assert {"RTX 4090", "RTX 3090", "A100 80GB", "H100 80GB"} <= priced and cost.CLOUD_DEFAULT_CARD in priced
    for name in priced:
        c = cards[name]
        assert 0 < c.rent_usd_per_hour < 20 and c.rent_offer and c.rent_source and c.rent_date[:3] == "202", name


# ---------------------------------------------------------------------------- a run on a faked GPU

@pytest.fixture(scope="module")
def metered_run(tmp_path_factory, tiny_model):
    """Two steps of a tiny run whose run file trains on GPU 0 of a faked RTX 4090 with an energy counter (the
    trainer itself computes on this CPU); no RAPL, as on most machines without root."""
    tmp = tmp_path_factory.mktemp("metered")
    rf = run_file(tmp, tiny_model, DEMO, name="metered",
                  hardware={"gpus": [0]}, run={"electricity_usd_per_kwh": 0.3},
                  train={"max_steps": 2, "eval_every_steps": 0, "save_every_steps": 0, "sample_max_new_tokens": 0})
    env = {**os.environ, "RIGTUNE_FAKE_NVML": str(PROFILES / "rtx4090-energy.json"),
           "RIGTUNE_FAKE_POWERCAP": str(tmp / "no-powercap")}
    res = rigtune("train", rf, "--no-tui", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "runs" / "metered", res.stdout


def test_a_faked_gpu_run_carries_energy_and_cost_from_the_profiles_counter(metered_run, tiny_model):
    run, out = metered_run
    counter = json.loads((PROFILES / "rtx4090-energy.json").read_text())["gpus"][0]["energy_mj"]
    kwh = (counter[-1] - counter[0]) / MJ_PER_KWH
    evs = events(run)
    start = next(e for e in evs if e["event"] == "start")
    assert start["energy_method"] == "NVML energy counter (GPU 0)" and start["energy_covers"] == "GPU"
    steps = [e for e in evs if e["event"] == "step"]
    assert [s["energy_kwh"] for s in steps] == [pytest.approx(kwh)] * 2
    assert [s["cost_usd"] for s in steps] == [pytest.approx(kwh * 0.3)] * 2
    names = [e["event"] for e in evs]
    assert names[-2:] == ["final", "end"]
    final = evs[-2]
    assert final["energy_kwh"] == pytest.approx(kwh) and final["cost_usd"] == pytest.approx(kwh * 0.3)
    assert final["gpu_kwh"] == pytest.approx(kwh) and final["cpu_kwh"] is None and final["covers"] == "GPU"
    assert final["not_measured"].startswith("no CPU energy: no RAPL energy counter")
    assert final["tokens"] == sum(s["tokens"] for s in steps) and final["electricity_usd_per_kwh"] == 0.3
    cfg = runfile.load(run / "run.toml")
    card = P.load_cards()["RTX 4090"]
    speed = P.tokens_per_s(cost.rented_input(cfg, P.resolve_model(str(tiny_model)), card, 1), card)
    assert final["cloud_card"] == "RTX 4090" and final["cloud_tokens_per_s"] == round(speed)
    assert final["cloud_usd_estimate"] == pytest.approx(final["tokens"] / speed / 3600 * 0.34, rel=1e-4)
    # the checkpoint carries the figures a --resume starts from
    state = json.loads((run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())
    assert state["energy"] == {"gpu_kwh": pytest.approx(kwh), "cpu_kwh": None, "tokens": final["tokens"]}
    assert f"energy {E.fmt_kwh(kwh)} (GPU only; no CPU energy" in out and f"{E.fmt_usd(kwh * 0.3)} at $0.3/kWh" in out


async def test_the_dashboard_shows_the_runs_energy_cost_and_cloud_estimate(metered_run):
    from runfixtures import FakeSampler
    from tui.app import RigtuneApp
    from tui.screens.dashboard import Dashboard
    run, _ = metered_run
    final = events(run)[-2]
    app = RigtuneApp(run_dir=run, sampler=FakeSampler())
    async with app.run_test(size=(80, 24)) as pilot:
        for _ in range(200):
            await pilot.pause(0.02)
            if isinstance(app.screen, Dashboard) and app.screen.attached:
                break
        d = app.screen
        assert isinstance(d, Dashboard) and d.attached
        panel = str(d.query_one("#throughput").render())
        assert f"GPU energy {E.fmt_kwh(final['energy_kwh'])} · {E.fmt_usd(final['cost_usd'])}" in panel
        assert f"cloud ~{E.fmt_usd(final['cloud_usd_estimate'])} (RTX 4090)" in panel
        assert d.query_one("#throughput").size.height == 4
