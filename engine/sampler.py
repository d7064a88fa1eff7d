"""A sampler thread for the dashboard: about once a second it reads each GPU through NVML (memory, utilisation,
temperature, power against its limit, and the share held by the run's own processes) or, on a CPU-only
machine, the CPU and memory of the trainer's process group through psutil. It swaps in an immutable
snapshot; the UI only ever reads `latest`, so nothing blocks the event loop (nvitop's pattern)."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    used_gib: float
    total_gib: float
    util: int
    temp_c: int | None
    power_w: float | None
    power_limit_w: float | None
    run_gib: float          # memory held by the run's own processes


@dataclass(frozen=True)
class CpuSample:
    cpu_percent: float      # of all cores, for the run's process group
    rss_gib: float
    ram_used_gib: float
    ram_total_gib: float
    processes: int


@dataclass(frozen=True)
class Snapshot:
    time: float
    gpus: tuple = ()
    cpu: CpuSample | None = None
    error: str | None = None        # this sample failed (a driver hiccup); the next one tries again
    note: str | None = None         # why there are no GPU figures (NVML did not start, or found no GPU)


def group_pids(pgid) -> set:
    import psutil
    if not pgid:
        return set()
    pids = set()
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == int(pgid):
                pids.add(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):  # ended, or another user's: not the run's
            continue
    return pids


def sample_gpus(nvml, pids: set) -> tuple:
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        mem = nvml.nvmlDeviceGetMemoryInfo(h)
        name = nvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name

        def opt(fn, *a):  # optional figures (some boards lack power or utilisation sensors): shown as absent
            try:
                return fn(h, *a)
            except Exception:
                return None
        util = opt(nvml.nvmlDeviceGetUtilizationRates)
        power = opt(nvml.nvmlDeviceGetPowerUsage)
        limit = opt(nvml.nvmlDeviceGetEnforcedPowerLimit)
        procs = opt(nvml.nvmlDeviceGetComputeRunningProcesses) or []
        run = sum((p.usedGpuMemory or 0) for p in procs if p.pid in pids)
        out.append(GpuSample(index=i, name=name.replace("NVIDIA ", "").replace("GeForce ", ""),
                             used_gib=mem.used / 2**30, total_gib=mem.total / 2**30,
                             util=util.gpu if util else 0, temp_c=opt(nvml.nvmlDeviceGetTemperature, 0),
                             power_w=power / 1000 if power else None, power_limit_w=limit / 1000 if limit else None,
                             run_gib=run / 2**30))
    return tuple(out)


def sample_cpu(pids: set, cache: dict) -> CpuSample:
    import psutil
    cpu, rss, alive = 0.0, 0, 0
    for pid in pids:
        try:
            proc = cache.get(pid) or cache.setdefault(pid, psutil.Process(pid))
            cpu += proc.cpu_percent(None)
            rss += proc.memory_info().rss
            alive += 1
        except psutil.Error:  # the process ended between the scan and this read: it no longer counts
            cache.pop(pid, None)
    vm = psutil.virtual_memory()
    return CpuSample(cpu_percent=cpu / (os.cpu_count() or 1), rss_gib=rss / 2**30, ram_used_gib=(vm.total - vm.available) / 2**30,
                     ram_total_gib=vm.total / 2**30, processes=alive)


class Sampler:
    """Background sampling of a run's hardware. `pgid_fn` returns the run's process group (it can change on
    resume); `nvml` is pynvml or a stand-in (engine.fakenvml), or None to find out."""

    def __init__(self, pgid_fn, nvml=None, interval: float = 1.0):
        self.pgid_fn, self.interval = pgid_fn, interval
        self.latest = Snapshot(time=0.0)
        self._stop = threading.Event()
        self._nvml = nvml
        self._nvml_ok = None
        self._note = None
        self._procs: dict = {}
        self._pids: set = set()
        self._pids_at = 0.0
        self._pgid = None
        self._thread = threading.Thread(target=self._run, name="rigtune-sampler", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()

    def _start_nvml(self) -> None:
        """Once: NVML (or the faked machine, engine.scan.nvml_module) up, or the reason it is not."""
        if self._nvml is None:
            from .scan import nvml_module
            self._nvml = nvml_module()
        if self._nvml is None:
            self._nvml_ok, self._note = False, "no GPU figures: pynvml is not installed"
            return
        try:
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
        except Exception as e:  # no driver (a CPU machine) or a broken one: said on the panel, CPU figures shown
            self._nvml_ok, self._note = False, f"no GPU figures: NVML did not start ({str(e) or type(e).__name__})"
            return
        self._nvml_ok = count > 0
        self._note = None if count else "no GPU figures: NVML found no GPU"

    def sample_once(self) -> Snapshot:
        if self._nvml_ok is None:
            self._start_nvml()
        pgid = self.pgid_fn()
        if pgid != self._pgid or time.time() - self._pids_at > 5.0:  # a full process scan every 5 s at most
            self._pgid, self._pids, self._pids_at = pgid, group_pids(pgid), time.time()
        pids = self._pids
        try:
            if self._nvml_ok:
                snap = Snapshot(time=time.time(), gpus=sample_gpus(self._nvml, pids), cpu=sample_cpu(pids, self._procs))
            else:
                snap = Snapshot(time=time.time(), cpu=sample_cpu(pids, self._procs), note=self._note)
        except Exception as e:  # a driver hiccup must not kill the dashboard: shown, and the next sample retries
            snap = Snapshot(time=time.time(), error=f"{type(e).__name__}: {e}")
        self.latest = snap
        return snap

    def _run(self):
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)
