"""Builds pylosses and its compiled extension pylosses._C.

The C++ (CPU) sources are always built. The CUDA sources (csrc/cuda/*.cu) are built when
FORCE_CUDA=1, or when a GPU and CUDA_HOME are found; never when USE_CUDA=0.

The CPU kernels are compiled for the vector instruction set that torch reports for the build
machine (torch.backends.cpu.get_cpu_capability(): AVX512, AVX2 or DEFAULT), as a source build
is; PYLOSSES_CPU_ISA=AVX512|AVX2|DEFAULT overrides it (use DEFAULT to build for another machine).

PYLOSSES_NO_EXTENSION=1 installs the Python package alone: the Makefile uses it for the editable
install and then builds the extension in place (python setup.py build_ext --inplace), which
ninja redoes incrementally.

Build isolation: the extension is compiled against the torch that is installed, so it needs
`pip install --no-build-isolation .`; a plain `pip install .` (isolated: no torch in the build
environment) stops with a message that says so, unless PYLOSSES_NO_EXTENSION=1 asks for the
pure-Python package, which builds anywhere.
"""

import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
NO_EXTENSION = os.environ.get("PYLOSSES_NO_EXTENSION") == "1"


def version():
    with open(os.path.join(ROOT, "pylosses", "_version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def _cuda_home_hint():
    """torch guesses CUDA_HOME as the folder above the nvcc on PATH; where that nvcc is a wrapper
    script (as some images install it), the guess has no CUDA in it: take the conventional
    /usr/local/cuda then. CUDA_HOME or CUDA_PATH, when set, win."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    standard = "/usr/local/cuda"
    header = os.path.join("include", "cuda_runtime.h")
    if not os.path.exists(os.path.join(guess, header)) and os.path.exists(os.path.join(standard, header)):
        os.environ["CUDA_HOME"] = standard


ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def cpu_isa(torch):
    isa = os.environ.get("PYLOSSES_CPU_ISA") or torch.backends.cpu.get_cpu_capability()
    isa = isa.upper()
    if isa not in ISA_FLAGS:  # e.g. ZVECTOR, VSX: the portable build
        isa = "DEFAULT"
    return isa


def want_cuda(torch, cuda_home):
    if os.environ.get("USE_CUDA") == "0":
        return False, "USE_CUDA=0"
    if os.environ.get("FORCE_CUDA") == "1":
        if torch.version.cuda is None or cuda_home is None:
            raise SystemExit("pylosses: FORCE_CUDA=1 needs a CUDA build of torch and the CUDA toolkit (CUDA_HOME); "
                             f"torch {torch.__version__} has CUDA {torch.version.cuda}, CUDA_HOME is {cuda_home}")
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available() and cuda_home is not None:
        return True, f"a GPU and CUDA_HOME={cuda_home} were found"
    return False, "no GPU or no CUDA_HOME (set FORCE_CUDA=1 to build the CUDA sources anyway)"


def cuda_arch_list(torch):
    """The architectures to compile for, set explicitly so that the build can say what it holds:
    TORCH_CUDA_ARCH_LIST when given, else this machine's GPUs', else Hopper (H100, H200), the
    GPUs we tune for."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps) or "9.0"
    return os.environ["TORCH_CUDA_ARCH_LIST"]


def write_build_info(torch, isa, archs):
    """build/generated-<python>/build_info.h: what csrc/pylosses.cpp reports as pylosses._C's
    cpu_capability, cuda_archs, cuda_version and torch_version (python -m pylosses shows them)."""
    folder = os.path.join(ROOT, "build", f"generated-py{sys.version_info[0]}{sys.version_info[1]}")
    os.makedirs(folder, exist_ok=True)
    values = {"CPU_CAPABILITY": isa, "CUDA_ARCHS": archs, "CUDA_VERSION": torch.version.cuda or "",
              "TORCH_VERSION": torch.__version__}
    text = "// written by setup.py: how pylosses._C was built\n#pragma once\n" + "".join(
        f'#define PYLOSSES_{key} "{value}"\n' for key, value in values.items())
    path = os.path.join(folder, "build_info.h")
    if not os.path.exists(path) or open(path).read() != text:  # unchanged: nothing to recompile
        with open(path, "w") as f:
            f.write(text)
    return folder


def extensions():
    if NO_EXTENSION:
        return [], {}
    _cuda_home_hint()  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        raise SystemExit(
            "pylosses: building the extension needs torch, and this build environment has none: pip's build "
            "isolation hides the torch you installed, which the extension must be compiled against. Run\n"
            "    pip install --no-build-isolation .\n"
            "(with torch, setuptools and wheel installed), or, for the pure-Python package (the triton, "
            "reference, jit and compile backends; no native kernels)\n"
            "    PYLOSSES_NO_EXTENSION=1 pip install .") from None
    isa = cpu_isa(torch)
    with_cuda, why = want_cuda(torch, CUDA_HOME)
    archs = cuda_arch_list(torch) if with_cuda else ""
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu")) if with_cuda else []
    # (at::vec's conversions trip gcc's maybe-uninitialized in every file that uses them)
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized", *ISA_FLAGS[isa]]
    macros = [("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)]
    print(f"pylosses: building pylosses._C: C++ for CPU ({len(cpp)} files, {isa} vectors)"
          + (f", CUDA ({len(cu)} files for {archs}: {why})" if with_cuda else f"; no CUDA ({why})"))
    kwargs = dict(
        name="pylosses._C",
        sources=cpp + cu,
        include_dirs=[write_build_info(torch, isa, archs)],
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
    # the ABI suffix (_C.cpython-312-...so) lets builds for several Pythons lie side by side in a
    # checkout (CI builds for the GPU machine's Python 3.12 beside the development one)
    cmdclass = {"build_ext": BuildExtension}
    if with_cuda:
        return [CUDAExtension(**kwargs)], cmdclass
    kwargs["extra_compile_args"] = cxx
    return [CppExtension(**kwargs)], cmdclass


ext_modules, cmdclass = extensions()
with open(os.path.join(ROOT, "README.md")) as f:
    long_description = f.read()

setup(
    name="pylosses",
    version=version(),
    description="Fused, hand-written loss kernels for PyTorch: MSE and BCE + total-variation segmentation loss",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=["pylosses", "pylosses.triton_kernels"],
    package_dir={"pylosses": "pylosses", "pylosses.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    python_requires=">=3.9",
    install_requires=["torch>=2.6"],
    extras_require={"triton": ["triton"]},
)
