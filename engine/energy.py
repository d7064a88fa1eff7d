"""What a run's energy is, measured, and what it costs: a meter for one training process and the account that
carries its figures across --resume. Plain Python (no torch), so a script can drive it:

    meter = Meter(gpus=[0]).start()        # the run's [hardware] gpus, as `rigtune scan` numbers them
    ...                                    # train
    reading = meter.read()                 # energy since start(): reading.kwh, .gpu_kwh, .cpu_kwh, .method
    meter.stop()

GPU energy comes from NVML's energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver
loaded; Volta and newer). Where a board does not support it, the meter integrates NVML's power reading
(nvmlDeviceGetPowerUsage, milliwatts), sampled about once a second in a daemon thread - a measurement too, and
the reading says which method it used. CPU energy comes from RAPL under /sys/class/powercap: only the top-level
package zones (intel-rapl:N named package-N; their sub-zones and a "psys" platform zone would count the same
joules twice), with the counter's wraparound at max_energy_range_uj. Most kernels let only root read RAPL.

A part that cannot be read is "not measured", with a short reason, never a guess: `Reading.kwh` is None when
nothing was measured, and covers only the parts named in `Reading.covers` otherwise. The NVML module and the
powercap folder can be given (tests); by default they are engine.scan.nvml_module() (the fake NVML when
RIGTUNE_FAKE_NVML names a profile) and RIGTUNE_FAKE_POWERCAP or /sys/class/powercap.
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .cost import cloud_estimate, sig

POWERCAP = Path("/sys/class/powercap")
SAMPLE_EVERY_S = 1.0
J_PER_KWH = 3.6e6
PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")  # a top-level RAPL zone; sub-zones are intel-rapl:N:M


@dataclass(frozen=True)
class Reading:
    """Energy since the meter started, by part. A part is None when it was not measured (its `*_missing` says
    why) or when the run has none (a CPU run has no GPU part: gpu_missing is None then)."""
    gpu_kwh: float | None
    cpu_kwh: float | None
    gpu_method: str = ""
    cpu_method: str = ""
    gpu_missing: str | None = None
    cpu_missing: str | None = None

    @property
    def kwh(self) -> float | None:
        parts = [p for p in (self.gpu_kwh, self.cpu_kwh) if p is not None]
        return sum(parts) if parts else None

    @property
    def covers(self) -> str:
        """Which parts `kwh` adds up: "GPU+CPU", "GPU", "CPU", or "" (nothing measured)."""
        return "+".join(n for n, p in (("GPU", self.gpu_kwh), ("CPU", self.cpu_kwh)) if p is not None)

    @property
    def method(self) -> str:
        return "; ".join(m for m in (self.gpu_method, self.cpu_method) if m)

    @property
    def not_measured(self) -> str | None:
        """What was not measured, and why (None when every part the run has was measured)."""
        return "; ".join(m for m in (self.gpu_missing, self.cpu_missing) if m) or None


class _Counter:
    """One GPU's NVML energy counter: the difference from the first reading."""
    method = "NVML energy counter"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle
        self.first = self.last = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)

    def poll(self, now: float) -> None:
        self.last = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)

    @property
    def joules(self) -> float:
        return (self.last - self.first) / 1000


class _Power:
    """One GPU's NVML power reading, integrated over time (trapezoids between samples)."""

    def __init__(self, nvml, handle, now: float, every: float):
        self.nvml, self.handle, self.t = nvml, handle, now
        self.w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000
        self.joules = 0.0
        self.method = f"NVML power sampled every {every:g} s"

    def poll(self, now: float) -> None:
        w = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000
        self.joules += (w + self.w) / 2 * max(0.0, now - self.t)
        self.w, self.t = w, now


class _Rapl:
    """One RAPL package zone: microjoules since the first reading, through the counter's wraparound."""

    def __init__(self, zone: Path):
        self.path = zone / "energy_uj"
        self.range = int((zone / "max_energy_range_uj").read_text())
        self.last = int(self.path.read_text())
        self.uj = 0

    def poll(self, now: float) -> None:
        value = int(self.path.read_text())
        delta = value - self.last
        self.uj += delta if delta >= 0 else delta + self.range  # it wrapped past max_energy_range_uj to 0
        self.last = value


def rapl_zones(root: Path) -> tuple[list, str | None]:
    """The readable top-level package zones under a powercap folder, or ([], why not)."""
    if not root.is_dir():
        return [], f"no RAPL energy counter ({root} not present)"
    zones = []
    for zone in sorted(p for p in root.iterdir() if PACKAGE_ZONE.fullmatch(p.name)):
        try:
            name = (zone / "name").read_text().strip()
        except OSError:  # a tree without names (some VMs): the zone's own name says it is top-level
            name = "package"
        if name.startswith("package"):
            zones.append(zone)
    if not zones:
        return [], f"no RAPL package zone in {root}"
    try:
        return [_Rapl(z) for z in zones], None
    except PermissionError:
        return [], f"RAPL energy counters in {root} not readable (only root may read them here)"
    except (OSError, ValueError) as e:
        return [], f"RAPL energy counters in {root} not readable ({getattr(e, 'strerror', None) or e})"


class Meter:
    """The energy of one training process's run: every GPU of `gpus` (NVML indices) and the CPU packages."""

    def __init__(self, gpus: list, nvml=None, powercap: str | Path | None = None,
                 sample_every: float | None = SAMPLE_EVERY_S, clock=time.monotonic):
        self.gpus = list(gpus)
        self.nvml = nvml
        self.root = Path(powercap or os.environ.get("RIGTUNE_FAKE_POWERCAP") or POWERCAP)
        self.every = sample_every
        self.clock = clock
        self.gpu_names: list = []
        self._gpu, self._cpu = [], []
        self._gpu_missing = self._cpu_missing = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # ---------------------------------------------------------------------- start and stop
    def start(self) -> "Meter":
        """Take the first readings, and start sampling where a part needs it (power, RAPL's wraparound).
        `sample_every=None` samples only when poll() or read() is called (tests drive it so)."""
        now = self.clock()
        self._gpu, self._gpu_missing = self._gpu_sources(now)
        self._cpu, self._cpu_missing = rapl_zones(self.root)
        sampled = self._cpu or any(isinstance(s, _Power) for s in self._gpu)
        if self.every and sampled:
            self._thread = threading.Thread(target=self._sample, name="rigtune-energy", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _gpu_sources(self, now: float) -> tuple[list, str | None]:
        if not self.gpus:
            return [], None  # a CPU run has no GPU part
        nvml = self.nvml
        if nvml is None:
            from .scan import nvml_module
            nvml = self.nvml = nvml_module()
        if nvml is None:
            return [], "no GPU energy: NVML is not installed (nvidia-ml-py)"
        error = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in self.gpus]
            self.gpu_names = [str(nvml.nvmlDeviceGetName(h)) for h in handles]
        except error as e:
            return [], f"no GPU energy: NVML cannot read GPUs {self.gpus} ({e})"
        sources = []
        for i, h in zip(self.gpus, handles):
            try:
                sources.append(_Counter(nvml, h))
            except error:  # no energy counter on this board (before Volta): integrate its power instead
                try:
                    sources.append(_Power(nvml, h, now, self.every or SAMPLE_EVERY_S))
                except error as e:
                    return [], f"no GPU energy: GPU {i} has no energy counter and no power reading ({e})"
        return sources, None

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - NVML or sysfs hiccup: the last good sample stands
                continue

    # ---------------------------------------------------------------------- reading
    def poll(self) -> None:
        """Sample every source now (the thread calls it about once a second; read() calls it too)."""
        now = self.clock()
        with self._lock:
            for source in (*self._gpu, *self._cpu):
                source.poll(now)

    def read(self) -> Reading:
        """Energy since start(), by part, with how each part was measured or why it was not."""
        try:
            self.poll()
        except Exception:  # noqa: BLE001 - NVML or sysfs hiccup: the figures up to the last good sample stand
            pass
        with self._lock:
            gpu_j = sum(s.joules for s in self._gpu)
            cpu_uj = sum(z.uj for z in self._cpu)
        measured_gpu = bool(self._gpu)
        return Reading(gpu_kwh=gpu_j / J_PER_KWH if measured_gpu else None,
                       cpu_kwh=cpu_uj / 1e6 / J_PER_KWH if self._cpu else None,
                       gpu_method=self._gpu_method() if measured_gpu else "",
                       cpu_method=f"RAPL package energy ({len(self._cpu)} package{'s' if len(self._cpu) > 1 else ''})"
                       if self._cpu else "",
                       gpu_missing=self._gpu_missing, cpu_missing=f"no CPU energy: {self._cpu_missing}"
                       if self._cpu_missing else None)

    def _gpu_method(self) -> str:
        methods = {}
        for i, s in zip(self.gpus, self._gpu):
            methods.setdefault(s.method, []).append(str(i))
        return "; ".join(f"{m} (GPU {', '.join(ids)})" for m, ids in methods.items())


# ---------------------------------------------------------------------------- a run's account

EARLIER = "not recorded for the steps before the resume (the checkpoint predates energy metering)"


def _plus(before, now):
    return None if before is None or now is None else before + now


class RunEnergy:
    """A run's energy, its electricity cost and the tokens its steps processed, including the runs it resumes:
    each checkpoint's trainer_state.json carries them (state()/restore()), as it carries the elapsed time, so
    the steps after the last checkpoint of a run that died count only once they are trained again. Every rank
    has one; only a machine's first process has a meter (it reads all of the run's GPUs on that machine)."""

    def __init__(self, price_usd_per_kwh: float, meter: Meter | None = None):
        self.price = price_usd_per_kwh
        self.meter = meter
        self.before = {"gpu_kwh": 0.0, "cpu_kwh": 0.0, "tokens": 0}
        self.tokens = 0

    @classmethod
    def start(cls, cfg, main: bool) -> "RunEnergy":
        return cls(cfg.run.electricity_usd_per_kwh, Meter(cfg.hardware.gpus).start() if main else None)

    def count(self, tokens: int) -> None:
        """A step's tokens (all ranks'), processed whether or not its update is applied."""
        self.tokens += tokens

    def restore(self, state: dict | None) -> None:
        """The figures a checkpoint recorded (None: one written before energy was metered)."""
        state = state if state is not None else {"gpu_kwh": None, "cpu_kwh": None, "tokens": None}
        self.before = {k: state.get(k) for k in ("gpu_kwh", "cpu_kwh", "tokens")}

    def reading(self) -> Reading | None:
        """The whole run's reading so far (this process's meter plus the runs it resumes); None without a meter."""
        if self.meter is None:
            return None
        r = self.meter.read()
        gpu, cpu = _plus(self.before["gpu_kwh"], r.gpu_kwh), _plus(self.before["cpu_kwh"], r.cpu_kwh)
        return Reading(gpu, cpu, r.gpu_method, r.cpu_method,
                       r.gpu_missing or (f"no GPU energy: {EARLIER}" if r.gpu_kwh is not None and gpu is None else None),
                       r.cpu_missing or (f"no CPU energy: {EARLIER}" if r.cpu_kwh is not None and cpu is None else None))

    @property
    def total_tokens(self) -> int | None:
        return None if self.before["tokens"] is None else self.before["tokens"] + self.tokens

    def step_fields(self) -> dict:
        """What a step event carries: energy_kwh and cost_usd so far, when measured (else nothing: the start
        event says why not)."""
        r = self.reading()
        if r is None or r.kwh is None:
            return {}
        return {"energy_kwh": sig(r.kwh), "cost_usd": sig(r.kwh * self.price)}

    def start_fields(self) -> dict:
        """What the start event carries: how energy is measured, or why it is not, and the price."""
        r = self.reading()
        if r is None:
            return {}
        return {"energy_method": r.method or None, "energy_covers": r.covers, "energy_not_measured": r.not_measured,
                "electricity_usd_per_kwh": self.price}

    def state(self) -> dict:
        r = self.reading()
        return {"gpu_kwh": r.gpu_kwh if r else None, "cpu_kwh": r.cpu_kwh if r else None, "tokens": self.total_tokens}

    def final(self, cfg, arch, elapsed_s: float) -> dict:
        """The final event's fields: energy and its cost (null when not measured, with why), what it covers and
        how it was measured, and the cloud estimate for the same tokens (engine.cost)."""
        r = self.reading() or Reading(None, None)
        kwh = r.kwh
        out = {"energy_kwh": sig(kwh), "cost_usd": sig(None if kwh is None else kwh * self.price),
               "gpu_kwh": sig(r.gpu_kwh), "cpu_kwh": sig(r.cpu_kwh),
               "covers": r.covers, "method": r.method or None, "not_measured": r.not_measured,
               "electricity_usd_per_kwh": self.price, "tokens": self.total_tokens, "hours": sig(elapsed_s / 3600),
               "gpus": len(cfg.hardware.gpus)}
        names = self.meter.gpu_names if self.meter else []
        try:
            cloud = cloud_estimate(cfg, arch, self.total_tokens, names[0] if names else None)
        except Exception as e:  # noqa: BLE001 - an estimate must never cost a finished run its end event
            cloud = {"cloud_usd_estimate": None, "cloud_note": f"no cloud estimate: {type(e).__name__}: {e}"}
        return {**out, **cloud}

    def stop(self) -> None:
        if self.meter is not None:
            self.meter.stop()


# ---------------------------------------------------------------------------- words

def fmt_kwh(kwh: float) -> str:
    """0.42 kWh, 12.3 kWh; below 0.01 kWh in Wh (3.6 Wh), so a short run does not read as 0.00."""
    if kwh < 0.01:
        return f"{kwh * 1000:.2g} Wh" if kwh else "0 Wh"
    return f"{kwh:.3g} kWh" if kwh < 100 else f"{kwh:,.0f} kWh"


def fmt_usd(usd: float) -> str:
    return "<$0.01" if 0 < usd < 0.005 else f"${usd:,.2f}"


def energy_words(kwh: float | None, usd: float | None, covers: str = "GPU+CPU") -> str:
    """One short line for a panel: 'energy 0.42 kWh · $0.07'; 'GPU energy ...' when only the GPUs (or only
    the CPU) were measured; 'energy: not measured' when nothing was."""
    if kwh is None:
        return "energy: not measured"
    what = "energy" if covers in ("GPU+CPU", "") else f"{covers} energy"
    return f"{what} {fmt_kwh(kwh)}" + (f" · {fmt_usd(usd)}" if usd is not None else "")
