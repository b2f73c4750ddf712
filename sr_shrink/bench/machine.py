"""What the benchmark ran on: CPU model, cores, threads, library versions and the input size."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from ..runtimes import runtime_version


def cpu_model() -> str:
    """Return the CPU's model name (from /proc/cpuinfo on Linux, else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """Return how many CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(threads: int, input_hw: tuple[int, int], device: str = "cpu") -> dict:
    """Return a JSON-ready description of this machine and the benchmark's settings."""
    info = {"cpu": cpu_model(), "cores": usable_cores(), "logical_cpus": os.cpu_count(), "threads": threads,
            "platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
            "onnxruntime": runtime_version("onnxruntime"), "litert": runtime_version("litert"),
            "input_size": f"{input_hw[0]}x{input_hw[1]}", "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
