"""`rigtune build`: what to buy, held against faked machines (hand-made NVML profiles plus host facts), so
every bill is the same on every machine. Assertions are on the parts listed, their reasons and what they
unlock according to the planner."""
import json
import tomllib

import pytest

import presets
from conftest import PROFILES, rigtune
from engine import build as B
from engine import planner as P
from engine import scan as S
from engine import tiers as T
from engine.fakenvml import FakeNvml

HOST = {"ram_gib": 128, "cpu_cores": 16, "disk_kind": "nvme", "disk_free_gib": 900}


def machine(profile: str | None, **host) -> S.Machine:
    """A scan of a hand-made machine: an NVML profile (None: no GPU) and host facts (RAM, cores, disk)."""
    data = json.loads((PROFILES / f"{profile or 'no-gpu'}.json").read_text())
    data["host"] = {**HOST, **host}
    return S.scan(nvml=FakeNvml(data))


def kinds(bill) -> list:
    return [i.kind for i in bill.items]


def test_no_gpu_24gb_hdd_to_the_3000_tier():
    bill = B.for_tier(machine(None, ram_gib=24, disk_kind="hdd"), T.tiers()["3000"])
    assert kinds(bill) == ["gpu", "bridge", "ram", "disk", "psu"]
    gpu, bridge, ram, disk, psu = bill.items
    assert gpu.part.startswith("2 x RTX 3090") and "GPUs: none here" in gpu.why
    assert "3-slot or 4-slot" in bridge.part
    assert "128 GB" in ram.part and "RAM 24 GB < the tier's 128 GB" in ram.why
    assert any(u.startswith("70B comfortably") for u in ram.unlocks)  # the RAM is what opens 70B
    assert "NVMe" in disk.part and "hdd" in disk.why
    watts = int(psu.part.split("at least ")[1].split(" W")[0])
    assert watts >= 1000 and "2 x 350 W (RTX 3090)" in psu.why and psu.usd_low is None  # no sourced PSU price
    assert bill.fine_tunes["70B"]["verdict"] == "comfortable"
    # presets/parts.toml: 2 x RTX 3090 ($500-800 each), the bridge ($120-200), 2 x the 64 GB kit ($525-689), the
    # 2 TB NVMe ($175-220); the PSU has no price and adds nothing
    assert (gpu.usd_low, gpu.usd_high, ram.usd_low, ram.usd_high) == (2 * 500, 2 * 800, 2 * 525, 2 * 689)
    assert (bill.usd_low, bill.usd_high) == (1000 + 120 + 1050 + 175, 1600 + 200 + 1378 + 220)
    assert bill.prices_unknown == [psu.part]


def test_one_4090_with_32gb_needs_only_ram_for_the_1500_tier():
    m = machine("rtx4090", ram_gib=32)
    before = B.fine_tunes(B.box_of(m))
    assert before["13B"]["verdict"] == "fits" and "32 GB" in before["13B"]["warnings"][0]
    bill = B.for_tier(m, T.tiers()["1500"])
    assert kinds(bill) == ["ram"]
    (ram,) = bill.items
    assert ram.part.startswith("RAM: add 32 GB") and "to reach 64 GB" in ram.part
    assert "RAM 32 GB < the tier's 64 GB" in ram.why
    assert any(u.startswith("13B comfortably") for u in ram.unlocks), ram.unlocks
    assert bill.fine_tunes["13B"]["verdict"] == "comfortable"


def test_two_3090s_without_nvlink_need_the_bridge():
    bill = B.for_tier(machine("dual3090-pcie"), T.tiers()["3000"])
    assert kinds(bill) == ["bridge"]
    assert "NVLink" in bill.items[0].part and bill.items[0].usd_low == 120 and bill.items[0].usd_high == 200
    assert "gradient sync" in bill.items[0].unlocks[0]


def test_two_4090s_get_no_bridge_and_are_told_why():
    profile = json.loads((PROFILES / "rtx4090.json").read_text())
    second = dict(profile["gpus"][0], bus_id="00000000:02:00.0")
    profile["gpus"].append(second)
    profile["host"] = HOST
    bill = B.for_tier(S.scan(nvml=FakeNvml(profile)), T.tiers()["3000"])
    assert "bridge" not in kinds(bill)
    assert any("no NVLink bridge: the RTX 4090 has no NVLink connector" in n for n in bill.notes)


def test_a_70b_on_one_24gb_card_gets_what_the_planner_decides():
    bill = B.for_model(machine("rtx4090", ram_gib=64), P.resolve_model("Llama-3.1-70B"))
    assert kinds(bill)[0] == "gpu" and bill.items[0].part.startswith("1 x RTX 4090")  # a second card
    assert any("fsdp + CPU offload" in n for n in bill.notes)  # and the RAM offload needs
    ram = next(i for i in bill.items if i.kind == "ram")
    assert "128 GB" in ram.part and "recommends at 70B" in ram.why
    assert bill.fine_tunes["70B"]["verdict"] == "comfortable" and "psu" in kinds(bill)
    # presets/parts.toml: one RTX 4090 ($1,200-1,400) and the 64 GB kit ($525-689)
    assert (bill.usd_low, bill.usd_high) == (1200 + 525, 1400 + 689)


# Cards presets/parts.toml does not list: the bill plans from the card here, at the VRAM NVML reports.

def test_an_unlisted_card_that_fits_the_model_today_needs_nothing():
    for profile, model, vram in [("a6000", "Llama-3.1-8B", "48.0 GiB"), ("laptop3080", "Llama-3.2-1B", "10.0 GiB")]:
        bill = B.for_model(machine(profile), P.resolve_model(model))
        assert bill.items == [], (profile, [i.part for i in bill.items])
        assert bill.notes[0] == "nothing to buy: this machine already meets the target."
        assert f"the card has {vram}" in bill.notes[1] and "single" in bill.notes[1], bill.notes


def test_more_of_an_unlisted_card_is_planned_at_its_nvml_vram_with_no_price():
    bill = B.for_model(machine("a6000"), P.resolve_model("Llama-3.1-70B"), seq_len=8192)
    assert kinds(bill) == ["gpu", "ram", "psu"]
    gpu, ram, psu = bill.items
    assert gpu.part.startswith("1 x RTX A6000 (48 GB)") and "not in presets/parts.toml" in gpu.part
    assert "replacing" not in gpu.part and "needs more than 1 x 48 GB" in gpu.why
    assert gpu.usd_low is None and gpu.usd_high is None and gpu.source == ""
    assert "RTX A6000's board power is not in presets/parts.toml" in psu.why
    assert bill.prices_unknown == [gpu.part, psu.part]
    # the 2 x 48 GB box wants 2x VRAM = 192 GB of RAM: the 64 GB kit ($525-689) on top of the 128 GB here
    assert "to reach 192 GB" in ram.part and (bill.usd_low, bill.usd_high) == (525, 689)
    assert any("does not say whether the RTX A6000 has an NVLink connector" in n for n in bill.notes), bill.notes
    text = B.describe(bill)
    assert "1 x RTX A6000 (48 GB), price and power not in presets/parts.toml   price: not known" in text
    assert "total: $525-689 (plus 1 x RTX A6000" in text and "price not known)" in text


def test_a_laptop_card_is_replaced_not_added_to():
    bill = B.for_model(machine("laptop3080"), P.resolve_model("Llama-3.1-70B"))
    gpu = bill.items[0]
    assert gpu.part.startswith("2 x RTX 3090") and "(replacing the cards here)" in gpu.part
    assert (gpu.usd_low, gpu.usd_high) == (2 * 500, 2 * 800) and "needs more than 1 x 10 GB" in gpu.why


def test_cards_that_differ_are_planned_as_they_are():
    profile = json.loads((PROFILES / "rtx4090.json").read_text())
    other = json.loads((PROFILES / "dual3090-pcie.json").read_text())["gpus"][1]
    profile["gpus"].append(other)
    profile["host"] = HOST
    bill = B.for_model(S.scan(nvml=FakeNvml(profile)), P.resolve_model("Llama-3.1-8B"))
    assert "gpu" not in kinds(bill) and "nothing to buy" in bill.notes[0], [i.part for i in bill.items]


def test_build_plans_from_an_unlisted_card_on_the_command_line(tmp_path):
    import os
    profile = json.loads((PROFILES / "a6000.json").read_text())
    profile["host"] = HOST
    path = tmp_path / "a6000.json"
    path.write_text(json.dumps(profile))
    res = rigtune("build", "--model", "Llama-3.1-8B", env={**os.environ, "RIGTUNE_FAKE_NVML": str(path)})
    assert res.returncode == 0, res.stderr
    assert "nothing to buy" in res.stdout and "the card has 48.0 GiB" in res.stdout


def test_build_json_contract_on_a_faked_machine(tmp_path):
    profile = json.loads((PROFILES / "rtx4090.json").read_text())
    profile["host"] = dict(HOST, ram_gib=32)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    import os
    res = rigtune("build", "--tier", "1500", "--json", env={**os.environ, "RIGTUNE_FAKE_NVML": str(path)})
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert {"target", "items", "usd_low", "usd_high", "fine_tunes"} <= set(data)
    assert set(data["fine_tunes"]) == {"7B", "13B", "34B", "70B"}
    for item in data["items"]:
        assert {"part", "why", "usd_low", "usd_high", "unlocks"} <= set(item)
    assert data["usd_low"] == 375 and data["items"][0]["price_date"]
    text = rigtune("build", "--tier", "1500", env={**os.environ, "RIGTUNE_FAKE_NVML": str(path)}).stdout
    assert "taken 2026-" in text and "total: $375-505" in text
    bad = rigtune("build", "--tier", "9999")
    assert bad.returncode == 2 and "unknown tier '9999'" in bad.stderr and "1500" in bad.stderr


def test_every_price_has_a_source_and_a_date():
    data = tomllib.loads(presets.PARTS.read_text())
    priced = list(data["gpus"].values()) + data["ram_kits"] + [data["nvlink_bridge"], data["nvme"]]
    for part in priced:
        assert part["usd_low"] <= part["usd_high"] and part["source"] and part["date"][:2] == "20", part
    for name, tier in T.tiers().items():
        assert tier.gpu_name in data["gpus"], name  # a tier's card must be a part the bill knows


def test_a_card_pays_for_itself_after_runs_like_a_typical_one(tmp_path):
    """No GPU run here yet: the 1500 tier's RTX 4090 against renting one for a typical run of the tier's model."""
    import math

    from engine import cost
    bill = B.for_tier(machine(None, ram_gib=128), T.tiers()["1500"])
    cost.add_payback(bill, tmp_path / "no-runs")
    (card_item,) = [i for i in bill.items if i.kind == "gpu"]
    p = card_item.payback
    inp, _ = T.plan_for(T.tiers()["1500"], P.resolve_model("Llama-3.1-8B"), optimizer="adamw_8bit")
    hours = 10_000_000 / P.tokens_per_s(inp, P.load_cards()["RTX 4090"]) / 3600
    cloud, home = hours * 0.34, (450 + 150 + 150) / 1000 * hours * 0.18  # cards.toml's rent, parts.toml's watts
    assert p["run"] == "a typical run (10M tokens of Llama-3.1-8B at seq 2048)"
    assert (p["cloud_usd_per_run"], p["electricity_usd_per_run"]) == (round(cloud, 4), round(home, 4))
    assert (p["runs_low"], p["runs_high"]) == (math.ceil(1200 / (cloud - home)), math.ceil(1400 / (cloud - home)))
    assert card_item.to_json()["payback_runs"] == [p["runs_low"], p["runs_high"]]
    assert all(i.to_json()["payback_runs"] is None for i in bill.items if i.kind != "gpu")
    assert f"pays for itself after {p['runs_low']:,}-{p['runs_high']:,} runs like a typical run" in B.describe(bill)


def test_build_pays_back_against_the_last_gpu_run_in_runs(tmp_path):
    """`build --json --runs DIR`: the newest GPU run there (its model, tokens and electricity price) is the run a
    card is paid back with; a newer CPU run is not; at a high enough price the card never pays for itself."""
    import os

    from engine import runfile
    profile = json.loads((PROFILES / "no-gpu.json").read_text())
    profile["host"] = dict(HOST, ram_gib=128)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    runs = tmp_path / "runs"

    def past_run(name, gpus, tokens, price):
        d = runs / name
        d.mkdir(parents=True)
        runfile.save(runfile.defaults(name=name, model={"base": "Llama-3.1-8B"}, data={"path": "d.jsonl"},
                                      hardware={"gpus": gpus}), d / "run.toml")
        final = {"event": "final", "time": 1.0, "gpus": len(gpus), "tokens": tokens, "electricity_usd_per_kwh": price}
        (d / "metrics.jsonl").write_text(json.dumps({"event": "start", "time": 0.0}) + "\n" + json.dumps(final) + "\n")
    past_run("gpu-run", [0], 2_000_000, 0.30)
    past_run("cpu-run", [], 900, 0.30)
    os.utime(runs / "gpu-run" / "metrics.jsonl", (1, 1))  # the CPU run is the newest
    env = {**os.environ, "RIGTUNE_FAKE_NVML": str(path)}
    res = rigtune("build", "--tier", "1500", "--json", "--runs", runs, env=env)
    assert res.returncode == 0, res.stderr
    card_item = json.loads(res.stdout)["items"][0]
    p = card_item["payback"]
    assert p["run"] == "the last GPU run here (gpu-run: 2M tokens of Llama-3.1-8B)"
    assert p["electricity_usd_per_run"] == round((450 + 300) / 1000 * p["hours_per_run"] * 0.30, 4)
    assert card_item["payback_runs"] == [p["runs_low"], p["runs_high"]] and p["runs_low"] > 0
    past_run("gpu-dear", [0], 2_000_000, 9.0)  # electricity at $9/kWh costs more than renting the card
    p = json.loads(rigtune("build", "--tier", "1500", "--json", "--runs", runs, env=env).stdout)["items"][0]["payback"]
    assert p["runs_low"] is None and p["note"].startswith("never") and "gpu-dear" in p["run"]
