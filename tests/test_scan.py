"""Hardware scan through the same NVML parsing code on hand-made profiles, and on this machine."""
import json

import pytest

from conftest import PROFILES, machine_env, rigtune
from engine import scan as S
from engine import tiers as T
from engine.fakenvml import FakeNvml


def machine(name):
    return S.scan(nvml=FakeNvml(PROFILES / f"{name}.json"))


def test_this_machine_scans_whatever_it_has():
    """The real scan of the machine the tests run on (GPUs or none): the contract's keys, real CPU/RAM/disk."""
    m = S.scan()
    assert m.ram_total_gib > 0 and m.cpu_count > 0 and m.disk_free_gib > 0
    assert all(g.memory_total_gib > 0 for g in m.gpus)
    data = json.loads(rigtune("scan", "--json").stdout)
    for key in ("gpus", "cpu_count", "ram_total_gib", "disk_free_gib", "disk_nvme", "driver", "cuda", "warnings"):
        assert key in data
    assert len(data["gpus"]) == len(m.gpus) and data["ram_total_gib"] > 0


def test_a_machine_without_a_gpu():
    res = rigtune("scan", "--json", env=machine_env("no-gpu"))
    data = json.loads(res.stdout)
    assert data["gpus"] == [] and "NVML Shared Library Not Found" in data["nvml_error"]
    plain = rigtune("scan", env=machine_env("no-gpu")).stdout
    assert "GPUs: none" in plain and "CPU" in plain and "no NVIDIA GPU here" in plain


def test_failed_queries_are_reported_not_silent():
    """A compute-capability or NVLink query that fails changes what rigtune assumes (bf16, the link), so it
    is said: on the GPU, in the machine's warnings, and in `rigtune scan`."""
    profile = json.loads((PROFILES / "dual3090-nvlink.json").read_text())
    profile["gpus"][0]["fail"] = {"cc": "Unknown Error", "nvlink": "Insufficient Permissions"}
    m = S.scan(nvml=FakeNvml(profile))
    g0, g1 = m.gpus
    assert g0.compute_capability == "unknown" and not g0.bf16 and g1.bf16
    assert g0.nvlink_peers == [] and g1.nvlink_peers == [0]
    assert any("compute capability query failed (Unknown Error)" in w for w in g0.warnings)
    assert any("NVLink query failed on link 0 (Insufficient Permissions)" in w for w in g0.warnings)
    assert len(m.warnings) == 2 and all(w.startswith("GPU 0: ") for w in m.warnings)
    assert "warning: GPU 0: NVLink query failed" in S.describe(m)
    # "Not Supported" is NVML's ordinary answer for a card without NVLink: no warning
    assert machine("rtx4090").warnings == []


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
