"""The sm_90 compiled-code gate (tools/sm90_gate.py): every Triton kernel variant compiled through
the launchers as a real launch specialises it, every CUDA kernel of the built extension, each
judged by what it compiles to. The gate runs in a subprocess without TRITON_INTERPRET (the
tests' process runs Triton in its interpreter, which compiles nothing)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import pylosses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import sm90_gate  # noqa: E402

HAS_TRITON = pylosses._ops.TRITON_ERROR is None
HAS_CUDA_KERNELS = pylosses._ops.EXTENSION_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key(
    "pylosses::seg_loss_fwd", "CUDA")


def _env():
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run_python(tmp_path, code, timeout=600):
    script = tmp_path / "script.py"  # Triton reads a kernel's source from its file
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90")
    only = [] if HAS_CUDA_KERNELS else ["--only", "triton"]
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sm90_gate.py"), "--out", str(out), *only],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=1500)
    table = json.loads((out / "table.json").read_text()) if (out / "table.json").exists() else None
    return done, table


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton kernels")
def test_gate_passes(gate):
    done, table = gate
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert table and all(not r["failures"] and not r["error"] for r in table["rows"])


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton kernels")
def test_gate_covers_every_kernel_and_the_awkward_shapes(gate):
    _, table = gate
    rows = table["rows"]
    triton = {r["kernel"] for r in rows if r["backend"] == "triton"}
    assert {"mse_fwd_kernel", "seg_fwd_kernel", "loss_backward_kernel", "sum_groups_kernel", "region_sums_kernel",
            "region_grad_kernel", "cross_entropy_fwd_kernel", "softmax_region_sums_kernel",
            "softmax_region_grad_kernel"} <= triton
    variants = " ".join(r["variant"] for r in rows)
    for shape in ("H=1", "W=1", "odd W", "3-D", "misaligned", "odd n", "odd S", "rows S=1"):
        assert shape in variants, shape
    if HAS_CUDA_KERNELS:
        cuda = {r["family"] for r in rows if r["backend"] == "cuda"}
        assert {"mse", "seg", "loss_backward", "sum", "ce", "softmax_region", "softmax_region_backward"} <= cuda


@pytest.mark.skipif(not HAS_CUDA_KERNELS and os.environ.get("PYLOSSES_REQUIRE_CUDA") != "1",
                    reason="the extension was built without CUDA")
def test_gate_reads_the_cuda_kernels(gate):
    _, table = gate
    assert HAS_CUDA_KERNELS, "PYLOSSES_REQUIRE_CUDA=1 but the extension has no CUDA kernels"
    seg = [r for r in table["rows"] if r["backend"] == "cuda" and r["family"] == "seg"]
    assert seg and all(r["registers"] > 0 for r in seg)


@pytest.mark.skipif(not HAS_TRITON, reason="no Triton kernels")
def test_standin_specialises_as_a_launch(tmp_path):
    # an integer argument equal to 1 becomes a constant, 16-divisible ones and aligned pointers
    # are marked: what a GPU launch does, and what the old compile check left out
    done = _run_python(tmp_path, """
        import sys; sys.path.insert(0, "tools")
        import torch, triton, triton.language as tl, sm90_gate

        @triton.jit
        def scale(x_ptr, n, s, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * s, mask=offs < n)

        with sm90_gate.standin_driver() as standin:
            scale[(1,)](torch.zeros(64), 1, 2.0, BLOCK=64)
            scale[(1,)](torch.zeros(64, dtype=torch.float64), 32, 2.0, BLOCK=64)
        one, f64 = standin.launches
        print("N_IS_ONE", one["src"].signature["n"] == "constexpr" or 1 in [v for k, v in one["src"].constants.items()])
        print("S_TYPE", f64["src"].signature["s"])
        print("CUBIN", len(f64["cubin"]) > 0)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "N_IS_ONE True" in done.stdout
    assert "S_TYPE fp32" in done.stdout  # Triton passes a Python float as fp32: why the gate checks
    assert "CUBIN True" in done.stdout


SASS = """
        code for sm_90
                Function : kern
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   FADD R4, R4, R5 ;
        /*0040*/                   LDG.E.U8 R6, desc[UR4][R8.64] ;
        /*0050*/                   FMUL R4, R4, R6 ;
        /*0060*/              @!P0 BRA 0x40 ;
        /*0070*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0080*/              @P1 BRA 0x20 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   BRA 0xa0;
"""


def test_sass_reading():
    functions = sm90_gate.parse_sass(SASS)
    body = functions["kern"]
    assert len(body) == 11
    assert sm90_gate.loops(body) == [(0x40, 0x60), (0x20, 0x80)]  # the padding self-loop is not one
    # the innermost loop that loads: 0x40..0x60
    assert sm90_gate.hot_loop(body) == ["LDG.E.U8 R6, desc[UR4][R8.64]", "FMUL R4, R4, R6", "@!P0 BRA 0x40"]
    assert [sm90_gate.access_bits(sm90_gate.opcode(t)) for _, t in body if "G." in t] == [128, 8, 64]


def test_resources_and_occupancy():
    text = " Function kern:\n  REG:40 STACK:8 SHARED:1024 LOCAL:0 CONSTANT[0]:560 TEXTURE:0\n"
    assert sm90_gate.parse_resources(text) == {"kern": (40, 8, 1024, 0)}
    assert sm90_gate.resident_warps(255, 128, 0) == 8  # the 16x128 tile: 2 programs of 4 warps
    assert sm90_gate.resident_warps(32, 256, 0) == 64
    assert sm90_gate.resident_warps(64, 256, 0) == 32
    assert sm90_gate.resident_warps(32, 256, 100_000) == 16  # shared memory: 2 blocks


def test_judge_flags_what_breaks_the_rules():
    v = sm90_gate.Variant("triton", "mse", "k", "v", threads=128, registers=157, stack_bytes=24, local_ops=6,
                          resident_warps=12,
                          load_bits=32, store_bits=32, vector_path=True, writes_stream=True, hot_instructions=400,
                          elements_per_pass=4,
                          bytes_per_element=12, f64_params=False)
    sm90_gate.judge(v)
    rules = sorted(f.split(":")[0] for f in v.failures)
    assert rules == ["instructions", "occupancy", "params", "spills", "vector", "vector"]
    assert not v.allowed
    seg = sm90_gate.Variant("cuda", "seg", "k", "v", threads=256, registers=64, resident_warps=32, load_bits=128,
                            store_bits=128, vector_path=True, writes_stream=True, hot_instructions=600, elements_per_pass=4,
                            bytes_per_element=9)
    sm90_gate.judge(seg)
    assert not seg.failures and seg.allowed and seg.allowed[0].startswith("instructions")
    assert seg.predicted_copy_fraction == pytest.approx(sm90_gate.INSTRUCTIONS_PER_BYTE * 9 / 150)


def test_template_args():
    name = "void pylosses::cuda::(anonymous namespace)::seg_fwd_kernel<true, 4, float, bool>(pylosses::X<float, bool>)"
    assert sm90_gate.template_args(name) == ["true", "4", "float", "bool"]


def test_elements_per_pass_come_from_the_bits_stored():
    """A pack's stores hold every output it writes: a float16 input's float32 gradient takes two
    128-bit stores for a pack of 8 (one pass, not two); an unrolled loop stores two packs."""
    seg_half = ["false", "8", "c10::Half", "bool"]
    two_stores = ["STG.E.128 desc[UR4][R2.64], R4", "STG.E.128 desc[UR4][R2.64+0x10], R8"]
    assert sm90_gate.cuda_elements_per_pass("seg", seg_half, 8, two_stores) == 8
    seg_float = ["false", "4", "float", "bool"]
    assert sm90_gate.cuda_elements_per_pass("seg", seg_float, 4, two_stores) == 8  # unrolled twice
    soft = ["false", "4", "float", "float"]  # the input's and the target's gradients
    assert sm90_gate.cuda_elements_per_pass("seg", soft, 4, two_stores) == 4
    backward = ["8", "BackwardArgs<c10::BFloat16, float>"]
    assert sm90_gate.cuda_elements_per_pass("loss_backward", backward, 8, two_stores) == 8


def test_a_call_in_the_hot_loop_is_reported():
    body = sm90_gate.parse_sass("""
                Function : k
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   CALL.REL.NOINC 0x40 ;
        /*0020*/              @P0 BRA 0x0 ;
        /*0030*/                   EXIT ;
        /*0040*/                   IMAD R5, R4, R4, RZ ;
        /*0050*/                   RET.REL.NODEC R20 0x0 ;
        /*0060*/                   BRA 0x60;
    """)["k"]
    v = sm90_gate.Variant("cuda", "loss_backward", "k", "v", threads=256)
    sm90_gate.fill_from_sass(v, body, (16, 0, 0, 0))
    assert (v.hot_instructions, v.hot_calls) == (3, 1)
    sm90_gate.judge(v)
    assert [f.split(":")[0] for f in v.failures] == ["calls"]


def test_softmax_region_kernels_are_their_own_families():
    """The fused softmax region kernels (csrc/cuda/softmax_region.cu), <class bound, mode, input>:
    not taken for the region kernels whose names they contain; a lane a pixel, so no vector
    path; the register path's pass covers the bound's classes, the chunked path's (bound 0) the
    classes its stores (backward) or loads (forward) of the input's width hold."""
    family = {name: next(f for key, f in sm90_gate._CUDA_FAMILY if key in name)
              for name in ("softmax_region_sums_kernel", "softmax_region_grad_kernel", "softmax_region_sum_rows_kernel",
                           "region_sums_kernel", "region_sums_backward_kernel")}
    assert family == {"softmax_region_sums_kernel": "softmax_region", "softmax_region_grad_kernel":
                      "softmax_region_backward", "softmax_region_sum_rows_kernel": "sum",
                      "region_sums_kernel": "region", "region_sums_backward_kernel": "region_backward"}
    name = "void pylosses::cuda::(anonymous namespace)::softmax_region_sums_kernel<32, (pylosses::math::RegionMode)0, float>(X)"
    targs = sm90_gate.template_args(name)
    assert targs == ["32", "(pylosses::math::RegionMode)0", "float"]
    assert sm90_gate.cuda_streams("softmax_region", targs) == ((4, 1 / 32), 0)
    assert sm90_gate.softmax_elements_per_pass(targs, []) == 32
    chunked = ["0", "(pylosses::math::RegionMode)2", "c10::BFloat16"]
    assert sm90_gate.cuda_streams("softmax_region_backward", chunked) == ((2, 0.0), 2)
    hot = ["LDG.E.U16 R4, desc[UR4][R2.64]", "LDG.E R6, desc[UR4][R8.64]", "STG.E.U16 desc[UR4][R2.64], R5",
           "STG.E.U16 desc[UR4][R2.64+0x2], R7"]
    assert sm90_gate.softmax_elements_per_pass(chunked, hot) == 2  # two stores of the gradient: unrolled twice
    assert sm90_gate.softmax_elements_per_pass(chunked, hot[:2]) == 1  # forward: the input's loads (16 bits)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
def test_gate_judges_one_cuda_source(tmp_path):
    """--cuda-source: one csrc/cuda/*.cu compiled for sm_90 with setup.py's flags and judged,
    without a CUDA build of the extension; the table names the command that made it."""
    source = os.path.join("csrc", "cuda", "loss_backward.cu")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sm90_gate.py"), "--only", "cuda",
                           "--cuda-source", source, "--out", str(tmp_path)],
                          env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert rows and {r["family"] for r in rows} == {"loss_backward"}
    assert all(r["registers"] > 0 and not r["failures"] for r in rows)
    assert f"--cuda-source {source}" in (tmp_path / "table.md").read_text()
