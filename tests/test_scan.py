"""Hardware scan through the same NVML parsing code on recorded profiles, and on this GPU-less machine."""
import json
import time
from pathlib import Path

import pytest

from conftest import rigtune
from engine import scan as S
from engine import tiers as T
from engine.fakenvml import FakeNvml

PROFILES = Path(__file__).parent / "profiles"


def machine(name):
    return S.scan(nvml=FakeNvml(PROFILES / f"{name}.json"))


def test_this_machine_has_no_gpu_and_scans_fast():
    t = time.perf_counter()
    m = S.scan()
    assert time.perf_counter() - t < 1.0
    assert m.gpus == [] and m.ram_total_gib > 0 and m.cpu_count > 0 and m.disk_free_gib > 0
    res = rigtune("scan", "--json")
    data = json.loads(res.stdout)
    for key in ("gpus", "cpu_count", "ram_total_gib", "disk_free_gib", "disk_nvme", "driver", "cuda"):
        assert key in data
    assert data["gpus"] == [] and data["ram_total_gib"] > 0
    plain = rigtune("scan").stdout
    assert "GPUs: none" in plain and "CPU" in plain and "no NVIDIA GPU here" in plain


def test_rtx4090_profile():
    m = machine("rtx4090")
    (g,) = m.gpus
    assert g.name == "NVIDIA GeForce RTX 4090" and g.memory_total_gib == pytest.approx(24.0, abs=0.1)
    assert g.compute_capability == "8.9" and g.bf16 and g.nvlink_peers == [] and g.pcie_gen == 4
    assert m.driver == "550.54.14" and m.cuda == "12.4"
    assert T.verdict(T.this_machine(m)).startswith("fits the $1,500 tier")


def test_dual_3090_nvlink_profile():
    m = machine("dual3090-nvlink")
    assert [g.nvlink_peers for g in m.gpus] == [[1], [0]]
    assert m.nvlinked
    assert T.verdict(T.this_machine(m)).startswith("fits the $3,000 tier")


def test_dual_3090_without_nvlink_is_not_the_3000_tier():
    m = machine("dual3090-pcie")
    assert [g.nvlink_peers for g in m.gpus] == [[], []] and [g.p2p_peers for g in m.gpus] == [[], []]
    ok, short = T.compare(T.this_machine(m), T.tiers()["3000"])
    assert "no NVLink" in short
    checks = {c.name: c for c in T.checks(T.this_machine(m), "70B")}
    assert not checks["nvlink"].ok and "PCIe" in checks["nvlink"].message


def test_laptop_is_below_the_tiers():
    m = machine("laptop3080")
    assert m.gpus[0].memory_total_gib == pytest.approx(10.0, abs=0.1)
    assert T.verdict(T.this_machine(m)).startswith("below the $1,500 tier: 10 GB cards")


def test_nvml_failure_is_an_ordinary_result():
    m = S.scan(nvml=FakeNvml({"fail_init": "Driver Not Loaded", "gpus": []}))
    assert m.gpus == [] and "Driver Not Loaded" in m.nvml_error


def test_disk_kind_reads_sys_block(tmp_path, monkeypatch):
    import psutil
    sysfs = tmp_path / "sys"
    for name, rot in (("nvme0n1", "0"), ("sda", "1")):
        (sysfs / "block" / name / "queue").mkdir(parents=True)
        (sysfs / "block" / name / "queue" / "rotational").write_text(rot + "\n")
        (sysfs / "class" / "block").mkdir(parents=True, exist_ok=True)
        (sysfs / "class" / "block" / name).symlink_to(sysfs / "block" / name)
    part = sysfs / "block" / "nvme0n1" / "nvme0n1p2"
    part.mkdir()
    (part / "partition").write_text("2\n")
    (sysfs / "class" / "block" / "nvme0n1p2").symlink_to(part)
    Part = type("Part", (), {})
    def parts(all=False):
        a, b = Part(), Part()
        a.device, a.mountpoint = "/dev/nvme0n1p2", "/"
        b.device, b.mountpoint = "/dev/sda", str(tmp_path / "hdd")
        return [a, b]
    (tmp_path / "hdd").mkdir()
    monkeypatch.setattr(psutil, "disk_partitions", parts)
    assert S.disk_kind("/", sys_root=sysfs) == "nvme"
    assert S.disk_kind(tmp_path / "hdd" / "x", sys_root=sysfs) == "hdd"
