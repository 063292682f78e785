"""Where a run came from: the code's git commit, the library versions, the device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the code that runs (of the checkout ``where``, default this package's),
    with "+changes" when tracked files differ from it: a run made from an edited checkout is
    not reproducible from the commit alone."""
    here = where or Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() or None
        if commit is None:
            return None
        changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=here, capture_output=True, text=True, timeout=10)
        return commit + ("+changes" if changes.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    names = ("mtrl-bench", "torch", "metaworld", "mujoco", "gymnasium", "numpy", "gin-config")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpuinfo('model name') or platform.processor() or platform.machine()}"




#: the parts of :func:`numerics` that decide which kernels run and how they round: runs
#: that agree on all of them and on the code are bit-identical (on a CPU; GPUs add their own
#: nondeterminism where kernels use atomics)
NUMERICS_KEY_FIELDS = ("device", "cpu_model", "cpu_capability", "torch_threads", "torch",
                       "blas", "onednn", "gpu", "cuda", "cudnn")

#: environment variables that make torch, MKL or oneDNN pick other kernels than the CPU's
#: best (README, Reproducibility: how an AVX512 CPU reruns AVX2 runs bit for bit); a run
#: records those that are set, and they enter its key (only when set, so that runs made
#: without any keep the key they had before this was recorded)
KERNEL_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR",
                      "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def numerics(device) -> dict:
    """What decides a run's floating-point results beyond its settings: the CPU (model,
    the SIMD level torch dispatches to, its vector flags), the threads torch computes with
    (a reduction split over more threads adds in another order), the cores it may use, the
    GPU and the torch/BLAS/oneDNN/CUDA/cuDNN builds, the variables of
    :data:`KERNEL_ENVIRONMENT` that are set; and ``key``, a short hash of the parts that
    select kernels (:data:`NUMERICS_KEY_FIELDS` and those variables), equal for runs made
    under the same numerics."""
    import hashlib
    import json
    import os

    import torch

    config = torch.__config__.show()
    flags = set(_cpuinfo("flags").split())
    record = {
        "device": device.type,
        "cpu_model": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "blas": _blas(config),
        "onednn": _config_line(config, "MKL-DNN") or _config_line(config, "oneDNN"),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "environment": {name: os.environ[name] for name in KERNEL_ENVIRONMENT
                        if os.environ.get(name)},
    }
    key_fields = {name: record[name] for name in NUMERICS_KEY_FIELDS}
    if record["environment"]:
        key_fields["environment"] = record["environment"]
    record["key"] = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()
                                   ).hexdigest()[:10]
    return record


def _cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ('' where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, sep, value = line.partition(":")
                if sep and name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def _blas(config: str) -> str | None:
    """The BLAS torch was built with (``BLAS_INFO``), with MKL's version where it is MKL."""
    import re

    found = re.search(r"\bBLAS_INFO=([^,\s]+)", config)
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    name = found.group(1) if found else None
    return f"{name} {mkl.group(1)}" if name == "mkl" and mkl else name


def _config_line(config: str, marker: str) -> str | None:
    """The library version on the build-info line that names ``marker``."""
    for line in config.splitlines():
        if marker in line:
            words = line.split()
            return next((w for w in words if w[:1] == "v" and w[1:2].isdigit()), line.strip())
    return None
