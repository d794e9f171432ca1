"""Builds pylosses and its compiled extension pylosses._C.

The C++ (CPU) sources are always built. The CUDA sources (csrc/cuda/*.cu) are built when
FORCE_CUDA=1, or when a GPU and CUDA_HOME are found; never when USE_CUDA=0.

The CPU kernels are compiled for the vector instruction set that torch reports for the build
machine (torch.backends.cpu.get_cpu_capability(): AVX512, AVX2 or DEFAULT), as a source build
is; PYLOSSES_CPU_ISA=AVX512|AVX2|DEFAULT overrides it (use DEFAULT to build for another machine).

PYLOSSES_NO_EXTENSION=1 installs the Python package alone: the Makefile uses it for the editable
install and then builds the extension in place (python setup.py build_ext --inplace), which
ninja redoes incrementally.
"""

import glob
import os
import shutil

from setuptools import setup


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


_cuda_home_hint()  # before torch.utils.cpp_extension reads it

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))

ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def cpu_isa():
    isa = os.environ.get("PYLOSSES_CPU_ISA") or torch.backends.cpu.get_cpu_capability()
    isa = isa.upper()
    if isa not in ISA_FLAGS:  # e.g. ZVECTOR, VSX: the portable build
        isa = "DEFAULT"
    return isa


def want_cuda():
    if os.environ.get("USE_CUDA") == "0":
        return False, "USE_CUDA=0"
    if os.environ.get("FORCE_CUDA") == "1":
        if torch.version.cuda is None or CUDA_HOME is None:
            raise SystemExit("pylosses: FORCE_CUDA=1 needs a CUDA build of torch and the CUDA toolkit (CUDA_HOME); "
                             f"torch {torch.__version__} has CUDA {torch.version.cuda}, CUDA_HOME is {CUDA_HOME}")
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available() and CUDA_HOME is not None:
        return True, f"a GPU and CUDA_HOME={CUDA_HOME} were found"
    return False, "no GPU or no CUDA_HOME (set FORCE_CUDA=1 to build the CUDA sources anyway)"


def extensions():
    if os.environ.get("PYLOSSES_NO_EXTENSION") == "1":
        return []
    isa = cpu_isa()
    with_cuda, why = want_cuda()
    cpp = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu = sorted(glob.glob("csrc/cuda/*.cu")) if with_cuda else []
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # nothing to detect the architecture from: Hopper (H100, H200), the GPUs we tune for
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    # (at::vec's conversions trip gcc's maybe-uninitialized in every file that uses them)
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas", "-Wno-maybe-uninitialized", *ISA_FLAGS[isa]]
    macros = [("CPU_CAPABILITY", isa), (f"CPU_CAPABILITY_{isa}", None)]
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "this machine's GPU")
    print(f"pylosses: building pylosses._C: C++ for CPU ({len(cpp)} files, {isa} vectors)"
          + (f", CUDA ({len(cu)} files for {arch}: {why})" if with_cuda else f"; no CUDA ({why})"))
    kwargs = dict(
        name="pylosses._C",
        sources=cpp + cu,
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=["-fopenmp"],
    )
    if with_cuda:
        return [CUDAExtension(**kwargs)]
    kwargs["extra_compile_args"] = cxx
    return [CppExtension(**kwargs)]


setup(
    name="pylosses",
    version="0.1.0",
    description="Fused, hand-written loss kernels for PyTorch: MSE and BCE + total-variation segmentation loss",
    packages=["pylosses", "pylosses.triton_kernels"],
    package_dir={"pylosses": "pylosses", "pylosses.triton_kernels": "triton_kernels"},
    ext_modules=extensions(),
    # the ABI suffix (_C.cpython-312-...so) lets builds for several Pythons lie side by side in a
    # checkout (CI builds for the GPU machine's Python 3.12 beside the development one)
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.6"],
)
