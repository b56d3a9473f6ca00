"""onnxruntime execution providers: which to ask for, and a loud check of the GPU install.

`onnxruntime` (CPU, required by insightface) and `onnxruntime-gpu` both install the Python
module `onnxruntime`; with both present one overwrites the other's files and a GPU user
silently runs on the CPU. The engine says so at start-up, naming the fix, and records only
the providers its sessions really use (`session.get_providers()`), never the ones it asked for.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger("engine.pipeline.providers")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_FIX = (
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.18' "
    "(README: 'GPU install')"
)


def choose_providers(preferred: list[str]) -> list[str]:
    """The configured execution providers that this onnxruntime build really has, in order;
    CPU always last as the fallback."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    chosen = [p for p in preferred if p in available and p != CPU]
    return [*chosen, CPU]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gpu_install_problems(preferred: list[str], available: list[str]) -> list[str]:
    """What is wrong with the GPU install, as sentences that name the fix; [] when nothing is
    (including a CPU-only install that never asked for CUDA)."""
    gpu_build, cpu_build = _installed("onnxruntime-gpu"), _installed("onnxruntime")
    problems = []
    if gpu_build and cpu_build:
        problems.append(
            "both onnxruntime and onnxruntime-gpu are installed; they ship the same module and "
            f"one shadows the other. Fix: {GPU_FIX}"
        )
    if gpu_build and CUDA in preferred and CUDA not in available:
        problems.append(
            f"onnxruntime-gpu is installed but {CUDA} is not available (providers: "
            f"{', '.join(available)}): every model runs on the CPU. Fix: {GPU_FIX}; check "
            "the CUDA and cuDNN libraries onnxruntime-gpu needs"
        )
    return problems


def check_gpu_install(preferred: list[str]) -> list[str]:
    """Warn loudly (once per pipeline) about a GPU install that will not use the GPU."""
    import onnxruntime

    problems = gpu_install_problems(preferred, list(onnxruntime.get_available_providers()))
    for problem in problems:
        log.warning("GPU INSTALL PROBLEM: %s", problem)
    return problems
