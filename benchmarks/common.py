"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The vector and matrix units this CPU reports (what decides which kernels are fast)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in present]
    except OSError:
        pass
    return []


def torch_build() -> str:
    """torch's version and the CPU capability its kernels dispatch to."""
    import torch

    return f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"


def cpu_name() -> str:
    from harmonia.calibration import cpu_model

    return cpu_model()
