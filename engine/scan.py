"""Hardware scan: GPUs through NVML (behind one small interface), CPU, RAM, and the disk that holds runs
and the Hugging Face cache. A machine without NVML or GPUs is an ordinary result: `gpus` is [].

`scan(nvml=...)` takes any object with pynvml's functions, so tests feed it hand-made profiles
(engine.fakenvml) and exercise the same parsing code as a real machine.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 1024 ** 3


@dataclass
class GPU:
    index: int
    name: str
    memory_total_gib: float
    memory_free_gib: float
    compute_capability: str
    bf16: bool
    nvlink_peers: list = field(default_factory=list)
    p2p_peers: list = field(default_factory=list)
    pcie_gen: int | None = None
    pcie_width: int | None = None
    temperature_c: int | None = None
    power_limit_w: float | None = None
    bus_id: str = ""
    warnings: list = field(default_factory=list)   # queries that failed, and what rigtune assumed instead


@dataclass
class Machine:
    gpus: list
    cpu_count: int
    cpu_model: str
    cpu_cores_physical: int | None
    ram_total_gib: float
    ram_available_gib: float
    disk_path: str
    disk_free_gib: float
    disk_nvme: bool
    disk_kind: str            # nvme | ssd | hdd | unknown
    hf_cache_path: str
    hf_cache_free_gib: float
    driver: str | None
    cuda: str | None
    nvml_error: str | None = None
    warnings: list = field(default_factory=list)   # every GPU's failed queries, "GPU i: ..." (see GPU.warnings)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def nvlinked(self) -> bool:
        return len(self.gpus) > 1 and all(g.nvlink_peers for g in self.gpus)

    @property
    def link(self) -> str:
        """How the cards talk: nvlink, p2p (PCIe peer-to-peer) or host (staged through system RAM)."""
        if self.nvlinked:
            return "nvlink"
        return "p2p" if len(self.gpus) > 1 and all(g.p2p_peers for g in self.gpus) else "host"


# ---------------------------------------------------------------------------- GPUs

def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _try(fn, *args, default=None):
    """For the queries whose failure changes nothing rigtune decides (driver string, PCIe link, temperature,
    power limit): the value, or `default` when the query fails."""
    try:
        return fn(*args)
    except Exception:  # shown as unknown; nothing is planned from these
        return default


# NVML's answer for a link index past the card's last link, or for a card without NVLink: not a failure
NO_MORE_LINKS = ("not supported", "invalid argument")


def _nvlink_peers(nvml, h, i: int, bus: list, warnings: list) -> list:
    """Indices of the cards this one reaches over an active NVLink. A query that fails for another reason is
    reported (the planner would otherwise take the link to be PCIe)."""
    peers = set()
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            state = nvml.nvmlDeviceGetNvLinkState(h, link)
        except Exception as e:
            if not any(t in _s(e).lower() for t in NO_MORE_LINKS):
                warnings.append(f"NVLink query failed on link {link} ({_s(e) or type(e).__name__}); links from "
                                "there on are taken as absent, so the planner may assume PCIe")
            break
        if state == getattr(nvml, "NVML_FEATURE_ENABLED", 1):
            try:
                remote = _s(nvml.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).lower()
            except Exception as e:
                warnings.append(f"NVLink {link} is up but its far end is unknown ({_s(e) or type(e).__name__})")
                continue
            if remote in bus and bus.index(remote) != i:
                peers.add(bus.index(remote))
    return sorted(peers)


def _compute_capability(nvml, h, warnings: list) -> tuple[str, bool]:
    """("8.9", bf16) - bf16 needs compute capability 8.0 (Ampere) or newer."""
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
    except Exception as e:
        warnings.append(f"compute capability query failed ({_s(e) or type(e).__name__}): bf16 support is unknown "
                        "and taken as absent; use compute_dtype = \"float16\" or check `nvidia-smi`")
        return "unknown", False
    return f"{major}.{minor}", major >= 8


def scan_gpus(nvml) -> tuple[list, str | None, str | None, str | None]:
    """(gpus, driver, cuda, error). Any NVML failure to start means no GPUs, with the reason."""
    try:
        nvml.nvmlInit()
    except Exception as e:  # no driver, no library: a CPU machine
        return [], None, None, f"NVML unavailable ({_s(e) or type(e).__name__})"
    try:
        driver = _try(lambda: _s(nvml.nvmlSystemGetDriverVersion()))
        cuda_raw = _try(nvml.nvmlSystemGetCudaDriverVersion)
        cuda = f"{cuda_raw // 1000}.{(cuda_raw % 1000) // 10}" if cuda_raw else None
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        bus = [_s(_try(lambda h=h: nvml.nvmlDeviceGetPciInfo(h).busId, default="")).lower() for h in handles]
        gpus = []
        for i, h in enumerate(handles):
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            warnings = []
            cc, bf16 = _compute_capability(nvml, h, warnings)
            peers = _nvlink_peers(nvml, h, i, bus, warnings)
            p2p = [j for j, other in enumerate(handles) if j != i and _try(
                nvml.nvmlDeviceGetP2PStatus, h, other, getattr(nvml, "NVML_P2P_CAPS_INDEX_READ", 0)) ==
                getattr(nvml, "NVML_P2P_STATUS_OK", 0)]
            limit = _try(nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            gpus.append(GPU(
                index=i, name=_s(nvml.nvmlDeviceGetName(h)), memory_total_gib=round(mem.total / GIB, 2),
                memory_free_gib=round(mem.free / GIB, 2), compute_capability=cc,
                bf16=bf16, nvlink_peers=peers, p2p_peers=p2p, warnings=warnings,
                pcie_gen=_try(nvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
                pcie_width=_try(nvml.nvmlDeviceGetCurrPcieLinkWidth, h),
                temperature_c=_try(nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)),
                power_limit_w=round(limit / 1000, 1) if limit else None, bus_id=bus[i]))
        return gpus, driver, cuda, None
    except Exception as e:
        return [], None, None, f"NVML error ({_s(e) or type(e).__name__})"
    finally:
        _try(nvml.nvmlShutdown)


# ---------------------------------------------------------------------------- CPU, RAM, disk

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # no /proc (not Linux): platform's answer below
        pass
    import platform
    return platform.processor() or platform.machine()


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_kind(path, sys_root: Path = Path("/sys")) -> str:
    """nvme, ssd, hdd or unknown for the block device holding `path` (from /sys/block)."""
    import psutil
    target = str(_existing(Path(path)))
    best = None
    for part in psutil.disk_partitions(all=False):
        mp = part.mountpoint
        if (target == mp or target.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best.mountpoint)):
            best = part
    if best is None or not best.device.startswith("/dev/"):
        return "unknown"
    name = Path(os.path.realpath(best.device)).name
    block = sys_root / "class" / "block" / name
    if not block.exists():
        return "unknown"
    if (block / "partition").exists():  # a partition: the disk is its parent
        name = Path(os.path.realpath(block)).parent.name
    if name.startswith("nvme"):
        return "nvme"
    try:
        rotational = (sys_root / "block" / name / "queue" / "rotational").read_text().strip()
    except OSError:  # a disk sysfs does not describe (network, overlay): said as "unknown" in scan
        return "unknown"
    return "hdd" if rotational == "1" else "ssd"


def hf_cache_path() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))


def nvml_module():
    """pynvml, or the hand-made machine profile RIGTUNE_FAKE_NVML names (tests/profiles): the one place that
    decides which NVML rigtune reads, so a faked machine is faked everywhere (scan, plan, launch checks)."""
    if os.environ.get("RIGTUNE_FAKE_NVML"):
        from .fakenvml import FakeNvml
        return FakeNvml(os.environ["RIGTUNE_FAKE_NVML"])
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency; scan then says so
        return None
    return pynvml


def scan(nvml=None, runs_path: str | Path = "runs") -> Machine:
    import psutil
    nvml = nvml if nvml is not None else nvml_module()
    gpus, driver, cuda, err = scan_gpus(nvml) if nvml is not None else ([], None, None, "pynvml not installed")
    vm = psutil.virtual_memory()
    runs = _existing(Path(runs_path))
    cache = hf_cache_path()
    kind = disk_kind(runs)
    m = Machine(
        gpus=gpus, cpu_count=os.cpu_count() or 1, cpu_model=cpu_model(),
        cpu_cores_physical=psutil.cpu_count(logical=False), ram_total_gib=round(vm.total / GIB, 2),
        ram_available_gib=round(vm.available / GIB, 2), disk_path=str(runs),
        disk_free_gib=round(psutil.disk_usage(str(runs)).free / GIB, 2), disk_nvme=kind == "nvme", disk_kind=kind,
        hf_cache_path=str(cache), hf_cache_free_gib=round(psutil.disk_usage(str(_existing(cache))).free / GIB, 2),
        driver=driver, cuda=cuda, nvml_error=err,
        warnings=[f"GPU {g.index}: {w}" for g in gpus for w in g.warnings])
    return with_host_facts(m, getattr(nvml, "profile", {}).get("host"))


def with_host_facts(m: Machine, host: dict | None) -> Machine:
    """A faked machine's host facts (a profile's "host": ram_gib, cpu_cores, disk_kind, disk_free_gib) in place of
    this one's, so what-if plans and bills are the same on every machine."""
    if not host:
        return m
    from dataclasses import replace
    kind = host.get("disk_kind", m.disk_kind)
    free = host.get("disk_free_gib", m.disk_free_gib)
    cores = host.get("cpu_cores", m.cpu_cores_physical)
    ram = host.get("ram_gib", m.ram_total_gib)
    return replace(m, ram_total_gib=ram, ram_available_gib=min(m.ram_available_gib, ram), cpu_count=host.get(
        "cpu_threads", cores or m.cpu_count), cpu_cores_physical=cores, disk_kind=kind, disk_nvme=kind == "nvme",
        disk_free_gib=free, hf_cache_free_gib=free)


def describe(m: Machine) -> str:
    """A short human table."""
    lines = []
    if m.gpus:
        lines.append(f"GPUs ({len(m.gpus)}), driver {m.driver}, CUDA {m.cuda}")
        for g in m.gpus:
            link = (f"NVLink to {','.join(map(str, g.nvlink_peers))}" if g.nvlink_peers else
                    f"P2P to {','.join(map(str, g.p2p_peers))}" if g.p2p_peers else "no P2P")
            pcie = f"PCIe {g.pcie_gen}x{g.pcie_width}" if g.pcie_gen else ""
            lines.append(f"  [{g.index}] {g.name:<26} {g.memory_total_gib:6.1f} GiB  cc {g.compute_capability}  "
                         f"bf16 {'yes' if g.bf16 else 'no '}  {link}  {pcie}".rstrip())
    else:
        lines.append(f"GPUs: none ({m.nvml_error or 'no NVIDIA GPU found'})")
    lines.append(f"CPU   {m.cpu_model}, {m.cpu_count} threads"
                 + (f" / {m.cpu_cores_physical} cores" if m.cpu_cores_physical else ""))
    lines.append(f"RAM   {m.ram_total_gib:.1f} GiB ({m.ram_available_gib:.1f} available)")
    lines.append(f"Disk  {m.disk_free_gib:.1f} GiB free at {m.disk_path} ({m.disk_kind})")
    lines.append(f"Cache {m.hf_cache_free_gib:.1f} GiB free at {m.hf_cache_path}")
    lines += [f"warning: {w}" for w in m.warnings]
    return "\n".join(lines)
