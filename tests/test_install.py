"""Installs as a user gets them: the wheels and the sdist that `python -m build --no-isolation`
makes from this checkout, the pure wheel (PYLOSSES_NO_EXTENSION=1) and the full one, each
installed into a fresh virtual environment and used from outside the checkout
(tests/install_smoke.py). The fresh environment reuses this one's torch and Triton through a
.pth file, as the README's install section allows (pip install --no-deps)."""

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest
import torch

from pylosses import _ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "install_smoke.py")


def _run(cmd, env=None, cwd=ROOT):
    """cmd's stdout; a failure shows its output."""
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The pure wheel, the full wheel and the sdist. The full wheel is built with the CUDA
    setting of the extension built in place, so that ninja reuses its objects."""
    out = tmp_path_factory.mktemp("dist")
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out)]
    _run(build + ["--sdist"], {"PYLOSSES_NO_EXTENSION": "1"})
    _run(build + ["--wheel"], {"PYLOSSES_NO_EXTENSION": "1"})
    files = {}
    for name in os.listdir(out):
        files["sdist" if name.endswith(".tar.gz") else "pure"] = out / name
    if _ops.EXTENSION_ERROR is None:
        cuda = torch._C._dispatch_has_kernel_for_dispatch_key("pylosses::seg_loss_fwd", "CUDA")
        _run(build + ["--wheel"], {"FORCE_CUDA": "1"} if cuda else {"USE_CUDA": "0"})
        files["full"] = next(out / n for n in os.listdir(out) if n.endswith(".whl") and "-none-any" not in n)
    return files


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new virtual environment whose site-packages reaches this one's (torch, Triton) last."""
    env = tmp_path_factory.mktemp("env")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = str(env / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    with open(os.path.join(site, "reuse-torch.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _install_and_smoke(python, wheel, mode, tmp_path):
    # --ignore-installed: pip sees this environment's editable pylosses through the .pth file,
    # and must neither skip the install nor touch that one
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", str(wheel)])
    env = {"TRITON_INTERPRET": "1", "PYTHONPATH": ""}
    out = _run([python, SMOKE, mode], env=env, cwd=tmp_path)  # outside the checkout
    assert f"install smoke test ({mode}): ok" in out


def test_the_pure_wheel_has_no_compiled_code(dist):
    names = zipfile.ZipFile(dist["pure"]).namelist()
    assert dist["pure"].name.endswith("-py3-none-any.whl")
    assert "pylosses/triton_kernels/segmentation.py" in names and "pylosses/__main__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names), names


def test_the_sdist_holds_what_the_build_needs(dist):
    names = {n.split("/", 1)[1] for n in tarfile.open(dist["sdist"]).getnames() if "/" in n}
    wanted = {"setup.py", "pyproject.toml", "LICENSE", "CHANGELOG.md", "README.md", "csrc/seg_loss_math.h",
              "csrc/cuda/cuda_common.cuh", "csrc/cpu/cpu_common.h", "csrc/pylosses.cpp", "pylosses/_version.py",
              "triton_kernels/segmentation.py"}
    assert wanted <= names, wanted - names


def test_a_pure_install_runs_triton_and_auto(dist, fresh_env, tmp_path):
    _install_and_smoke(fresh_env, dist["pure"], "pure", tmp_path)


@pytest.mark.skipif(_ops.EXTENSION_ERROR is not None, reason="the extension is not built here (make build)")
def test_a_full_install_runs_native(dist, fresh_env, tmp_path):
    names = zipfile.ZipFile(dist["full"]).namelist()
    assert [n for n in names if n.startswith("pylosses/_C.") and n.endswith(".so")], names
    _install_and_smoke(fresh_env, dist["full"], "full", tmp_path)


def test_an_isolated_build_says_what_to_run(tmp_path):
    """pip's build isolation hides the installed torch: setup.py stops with the command to run,
    unless the pure package is asked for."""
    block_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
                   "runpy.run_path('setup.py', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", block_torch], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYLOSSES_NO_EXTENSION": "0"})
    assert done.returncode != 0
    assert "pip install --no-build-isolation ." in done.stderr and "PYLOSSES_NO_EXTENSION=1" in done.stderr, done.stderr
    pure = _run([sys.executable, "-c", block_torch], {"PYLOSSES_NO_EXTENSION": "1"})
    from pylosses import __version__

    assert pure.strip().splitlines()[-1] == __version__


def test_python_m_pylosses_reports_the_install():
    out = _run([sys.executable, "-m", "pylosses"])
    assert out.startswith("pylosses ") and "torch " in out and "backends by device" in out
    import json

    env = json.loads(_run([sys.executable, "-m", "pylosses", "--json"]))
    import pylosses

    assert env == json.loads(json.dumps(pylosses.collect_env()))
    assert env["extension"]["built"] == (_ops.EXTENSION_ERROR is None)
    cpu = env["devices"][0]
    assert cpu["device"] == "cpu" and cpu["backends"] == pylosses.available_backends("cpu")
    assert cpu["auto"] == ("native" if env["extension"]["built"] else "reference")
    if env["extension"]["built"]:
        assert env["extension"]["cpu_capability"] in ("AVX512", "AVX2", "DEFAULT")
        assert env["extension"]["built_against_torch"] == torch.__version__
    # the GPU run that backend="auto"'s GPU order rests on is in this source tree (where there is one)
    gpu = env["gpu_measurements"]
    if gpu["results_in_source_tree"] is not None:
        assert gpu["backend_order_from"] in gpu["results_in_source_tree"]
