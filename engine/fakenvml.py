"""A stand-in for the pynvml module, fed from a hand-made profile (JSON: a real card model's figures, written by
hand, not captured from a machine), for tests and demos of machines we don't have. It implements the pynvml functions rigtune calls, with pynvml's constants and error type.

Profile: {"driver": "550.54.14", "cuda": 12040, "gpus": [{"name", "memory_total_mib", "memory_used_mib",
"cc": [8, 9], "bus_id", "nvlink": [remote bus id per active link], "p2p": [peer indices], "pcie": [gen, width],
"temperature": C, "power_limit_w": W, "power_w": W, "utilization": %, "processes": [{"pid", "used_mib"}],
"fail": {"cc" | "nvlink" | "nvlink_remote": "an NVML error message to raise from that query"},
"energy_mj": a number or a list}]}

"energy_mj" is the GPU's energy counter (nvmlDeviceGetTotalEnergyConsumption: millijoules since the driver
loaded): one reading, or successive readings - each call returns the next, and the last one repeats - so a
test knows exactly what a meter that reads it at the start and at every step will add up. A GPU without it
answers that query with NVMLError("Not Supported"), as boards before Volta do; a meter then integrates
"power_w" (nvmlDeviceGetPowerUsage) instead. Each FakeNvml object keeps its own place in the readings.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

NVML_NVLINK_MAX_LINKS = 18
NVML_FEATURE_DISABLED, NVML_FEATURE_ENABLED = 0, 1
NVML_P2P_CAPS_INDEX_READ = 0
NVML_P2P_STATUS_OK, NVML_P2P_STATUS_NOT_SUPPORTED = 0, 5
NVML_TEMPERATURE_GPU = 0
MIB = 1024 ** 2


class NVMLError(Exception):
    pass


class FakeNvml:
    NVML_NVLINK_MAX_LINKS = NVML_NVLINK_MAX_LINKS
    NVML_FEATURE_ENABLED = NVML_FEATURE_ENABLED
    NVML_P2P_CAPS_INDEX_READ = NVML_P2P_CAPS_INDEX_READ
    NVML_P2P_STATUS_OK = NVML_P2P_STATUS_OK
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVMLError = NVMLError

    def __init__(self, profile: dict | str | Path):
        if not isinstance(profile, dict):
            profile = json.loads(Path(profile).read_text())
        self.profile = profile
        self.gpus = profile.get("gpus", [])
        self.fail_init = profile.get("fail_init")
        self._energy_reads: dict = {}  # GPU index -> energy counter readings taken

    # lifecycle and system
    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError(self.fail_init)

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return self.profile.get("driver", "")

    def nvmlSystemGetCudaDriverVersion(self):
        return self.profile.get("cuda", 0)

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return i

    # per device
    def nvmlDeviceGetName(self, h):
        return self.gpus[h]["name"]

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self.gpus[h]
        total, used = g["memory_total_mib"] * MIB, g.get("memory_used_mib", 0) * MIB
        return SimpleNamespace(total=total, used=used, free=total - used)

    def _fail(self, h, query):
        msg = self.gpus[h].get("fail", {}).get(query)
        if msg:
            raise NVMLError(msg)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        self._fail(h, "cc")
        return tuple(self.gpus[h]["cc"])

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=self.gpus[h]["bus_id"])

    def nvmlDeviceGetNvLinkState(self, h, link):
        self._fail(h, "nvlink")
        links = self.gpus[h].get("nvlink")
        if not links or link >= len(links) + 2:  # NVML answers "not supported" past the last link
            raise NVMLError("Not Supported")
        return NVML_FEATURE_ENABLED if link < len(links) else NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, h, link):
        self._fail(h, "nvlink_remote")
        return SimpleNamespace(busId=self.gpus[h]["nvlink"][link])

    def nvmlDeviceGetP2PStatus(self, h1, h2, cap):
        return NVML_P2P_STATUS_OK if h2 in self.gpus[h1].get("p2p", []) else NVML_P2P_STATUS_NOT_SUPPORTED

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h):
        return self.gpus[h].get("pcie", [None, None])[0]

    def nvmlDeviceGetCurrPcieLinkWidth(self, h):
        return self.gpus[h].get("pcie", [None, None])[1]

    def nvmlDeviceGetTemperature(self, h, sensor):
        return self.gpus[h].get("temperature", 40)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return int(self.gpus[h].get("power_limit_w", 300) * 1000)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        readings = self.gpus[h].get("energy_mj")
        if readings is None:
            raise NVMLError("Not Supported")
        if not isinstance(readings, list):
            readings = [readings]
        n = self._energy_reads.get(h, 0)
        self._energy_reads[h] = n + 1
        return int(readings[min(n, len(readings) - 1)])

    def nvmlDeviceGetPowerUsage(self, h):
        return int(self.gpus[h].get("power_w", 30) * 1000)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.gpus[h].get("utilization", 0), memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p["used_mib"] * MIB)
                for p in self.gpus[h].get("processes", [])]
