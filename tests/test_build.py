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
    assert bill.usd_low == sum(i.usd_low for i in bill.items if i.usd_low is not None) > 2000


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
