"""What this install of pylosses is and can do: pylosses.collect_env() and python -m pylosses.

For a bug report, and for a user who wants to know which backends run where: versions, how the
extension was built (or why it is not there), the backends on each visible device and what
backend="auto" picks there, and whether the GPU kernels have been measured on a GPU.
"""

import glob
import json
import os
import platform

import torch

from . import _ops, functional
from ._version import __version__

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _extension() -> dict:
    if _ops.EXTENSION_ERROR is not None:
        return {"built": False, "why": f"{_ops.EXTENSION_ERROR}; {functional.HOW_TO_BUILD}"}
    from . import _C

    has_cuda = "CUDA" in _ops.NATIVE_KEYS
    return {
        "built": True,
        "file": _C.__file__,
        "cpu_capability": _C.cpu_capability,  # the vector instruction set of the CPU kernels
        "cuda_kernels": has_cuda,
        "cuda_archs": _C.cuda_archs if has_cuda else None,
        "cuda_version": _C.cuda_version if has_cuda else None,
        "built_against_torch": _C.torch_version,
    }


def _triton() -> dict:
    if _ops.TRITON_ERROR is not None:
        return {"available": False, "why": f"{_ops.TRITON_ERROR}; {functional.HOW_TO_GET_TRITON}"}
    import triton

    return {"available": True, "version": triton.__version__,
            "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}


def _device(device: str, name: str, **extra) -> dict:
    auto = functional._auto_backend(device)
    entry = {"device": device, "name": name, **extra, "backends": functional.available_backends(device), "auto": auto}
    if auto == "reference":
        entry["auto_why"] = functional._auto_fallback_reason(device)
    return entry


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _devices() -> list:
    devices = [_device("cpu", _cpu_name(),
                       cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            devices.append(_device(f"cuda:{i}", torch.cuda.get_device_name(i), capability=f"{major}.{minor}"))
    return devices


def _gpu_measurements() -> dict:
    """Whether the GPU kernels have been measured: what the code's backend order rests on
    (functional.GPU_MEASUREMENT) and, in a source checkout, the GPU results under
    benchmarks/results/."""
    found = None
    results = os.path.join(SOURCE_ROOT, "benchmarks", "results")
    if os.path.isdir(results):
        found = []
        for path in sorted(glob.glob(os.path.join(results, "**", "results.json"), recursive=True)):
            try:
                with open(path) as f:
                    machine = json.load(f).get("machine", {})
            except (OSError, ValueError):
                continue
            if machine.get("device") == "cuda":
                found.append(os.path.relpath(os.path.dirname(path), SOURCE_ROOT))
    return {"backend_order_from": functional.GPU_MEASUREMENT, "results_in_source_tree": found}


def collect_env() -> dict:
    """pylosses, torch, Triton, CUDA and Python versions; how the extension was built (or why it
    is not there); the backends on each visible device and what backend="auto" picks; whether
    the GPU kernels have been measured on a GPU. What python -m pylosses prints."""
    return {
        "pylosses": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton(),
        "extension": _extension(),
        "devices": _devices(),
        "gpu_measurements": _gpu_measurements(),
    }


def format_env(env: dict) -> str:
    ext, tri, gpu = env["extension"], env["triton"], env["gpu_measurements"]
    lines = [
        f"pylosses {env['pylosses']} ({env['location']})",
        f"Python {env['python']}, {env['platform']}",
        f"torch {env['torch']} (CUDA {env['torch_cuda'] or 'none: a CPU build'})",
        "Triton " + (f"{tri['version']}" + (" (TRITON_INTERPRET=1: the interpreter)" if tri["interpreter"] else "")
                     if tri["available"] else f"not available: {tri['why']}"),
    ]
    if ext["built"]:
        cuda = (f"CUDA kernels for {ext['cuda_archs']} (CUDA {ext['cuda_version']})" if ext["cuda_kernels"]
                else "no CUDA kernels")
        lines.append(f"extension pylosses._C: CPU kernels ({ext['cpu_capability']} vectors), {cuda}; "
                     f"built against torch {ext['built_against_torch']}")
    else:
        lines.append(f"extension pylosses._C: not built ({ext['why']})")
    lines.append("backends by device (fastest first), and what backend='auto' picks:")
    for d in env["devices"]:
        extra = f", capability {d['capability']}" if "capability" in d else ""
        lines.append(f"  {d['device']} ({d['name']}{extra}): {', '.join(d['backends'])}; auto: {d['auto']}"
                     + (f" ({d['auto_why']})" if "auto_why" in d else ""))
    if not any(d["device"].startswith("cuda") for d in env["devices"]):
        lines.append("  no GPU visible (torch.cuda.is_available() is False)")
    if gpu["backend_order_from"]:
        measured = f"yes: backend='auto' follows {gpu['backend_order_from']}"
    else:
        measured = "no: backend='auto' on CUDA tensors follows a static order (native, then triton)"
    if gpu["results_in_source_tree"]:
        measured += "; GPU results in this source tree: " + ", ".join(gpu["results_in_source_tree"])
    elif gpu["results_in_source_tree"] is not None:
        measured += "; no GPU results in this source tree's benchmarks/results/"
    lines.append(f"GPU kernels measured on a GPU: {measured}")
    return "\n".join(lines)
