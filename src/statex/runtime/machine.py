"""What a run ran on: the processor or GPU by name and the versions of the packages its numbers depend on.

Reports print it beside their timings, so that a table says which machine made it; the prewarm cache keys its
compiled kernels on the same versions. Package versions come from the installed metadata (importing fla to ask
would cost seconds); the GPU's name from torch, only when CUDA is in use.
"""
from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "triton", "fla-core")


def software_versions() -> dict[str, str]:
    """{"python": ..., "torch": ..., "triton": ..., "fla-core": ...}; "-" for a package that is not installed."""
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return versions


def processor_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name() -> str | None:
    """The current CUDA device's name, or None without CUDA."""
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a broken driver only loses the name
        return None


def describe(device: str) -> dict[str, str]:
    """The machine a run on ``device`` ("cuda" or "cpu") uses: {"device": name, **software_versions()}."""
    name = gpu_name() if device == "cuda" else None
    return {"device": name or processor_name(), **software_versions()}


def summary(machine: dict[str, str]) -> str:
    """'NVIDIA H100 80GB HBM3 (torch 2.11.0, triton 3.6.0, fla-core 0.6.0)': the packages that are installed."""
    installed = [f"{name} {machine[name]}" for name in PACKAGES if machine.get(name, "-") != "-"]
    return machine.get("device", "unknown device") + (f" ({', '.join(installed)})" if installed else "")
