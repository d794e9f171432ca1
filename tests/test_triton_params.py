"""What the Triton launchers compile to for sm_90 (no GPU needed): each case runs a launcher on
CPU tensors in a process without TRITON_INTERPRET, under a stand-in driver that reports an sm_90
device, and compiles what the launch would have run, with that launch's specialisation
(integers equal to 1, multiples of 16, aligned pointers), instead of running it.

Checked: every scalar parameter has an explicit type; a float64 launch gets its float factors
as .f64 (a Python float is passed as f32), and a float32 launch does no float64 arithmetic an
element;
integer arguments equal to 1 compile; MSE's and the segmentation loss's main streams are
vector accesses whatever the length or width; loss_backward divides no int64.
"""

import inspect
import json
import os
import re
import subprocess
import sys

import pytest

import pylosses

pytestmark = pytest.mark.skipif(pylosses._ops.TRITON_ERROR is not None, reason="no Triton kernels")

# case: (launcher, dtype name, arguments); the shapes are small: only the specialisation counts
CASES = {
    "seg_f64": ("seg", "float64", dict(shape=(2, 1, 5, 19), logits=False)),
    "seg_f64_logits_3d": ("seg", "float64", dict(shape=(1, 2, 3, 5, 19), logits=True)),
    "seg_f32": ("seg", "float32", dict(shape=(2, 1, 5, 19), logits=True)),
    "seg_h1": ("seg", "float32", dict(shape=(2, 1, 1, 37), logits=False)),
    "seg_w1": ("seg", "bfloat16", dict(shape=(2, 3, 8, 1), logits=True)),
    "seg_d1_h1": ("seg", "float32", dict(shape=(1, 2, 1, 1, 40), logits=False)),
    "seg_odd_w": ("seg", "float32", dict(shape=(2, 1, 9, 101), logits=False)),
    "mse_f64": ("mse", "float64", dict(n=4096 * 3)),
    "mse_f32_odd_n": ("mse", "float32", dict(n=4096 * 3 + 5)),
    "mse_n1": ("mse", "float32", dict(n=1)),
    "backward_f64": ("backward", "float64", dict(n=4096 * 3, k=1)),
    "backward_groups": ("backward", "float32", dict(n=4096 * 3, k=96)),
    "backward_long_groups": ("backward", "bfloat16", dict(n=4096 * 6, k=3)),
    "backward_n1": ("backward", "float32", dict(n=1, k=1)),
}
FLOAT_FACTORS = {"seg_fwd_kernel": 4, "mse_fwd_kernel": 1, "loss_backward_kernel": 2}  # weights, scales


def _compile_cases(names):
    """{case: [compiled kernel, ...] or why they did not compile}, each kernel {name, params:
    {parameter: PTX type}, facts about its PTX}."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run([sys.executable, __file__, json.dumps(names)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    return _compile_cases(list(CASES))


def _kernels(compiled, case):
    assert not isinstance(compiled[case], str), compiled[case]  # else: why it did not compile
    return compiled[case]


def test_scalar_parameters_have_explicit_types():
    from pylosses.triton_kernels import common, mse, segmentation

    kernels = [common.sum_groups_kernel, common.loss_backward_kernel, mse.mse_fwd_kernel, segmentation.seg_fwd_kernel]
    for kernel in kernels:
        fn = getattr(kernel, "fn", kernel)
        for name, param in inspect.signature(fn).parameters.items():
            if not name.endswith("_ptr"):  # tensors carry their own type
                assert param.annotation is not inspect.Parameter.empty, f"{fn.__name__}: {name} has no type"


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("f64") or "f64_" in c])
def test_float64_launches_get_float64_factors(compiled, case):
    for kernel in _kernels(compiled, case):
        floats = [ty for ty in kernel["params"].values() if ty in (".f32", ".f64")]
        assert floats == [".f64"] * FLOAT_FACTORS.get(kernel["name"], 0), (kernel["name"], kernel["params"])


def test_float32_launches_do_no_float64_arithmetic_an_element(compiled):
    """(loss_backward finds a block's first group with one float64 product a program.)"""
    for case in ("seg_f32", "mse_f32_odd_n", "backward_groups"):
        for kernel in _kernels(compiled, case):
            assert kernel["f64_arithmetic"] <= (kernel["name"] == "loss_backward_kernel"), (case, kernel["name"])


@pytest.mark.parametrize("case", ["seg_h1", "seg_w1", "seg_d1_h1", "mse_n1", "backward_n1"])
def test_arguments_equal_to_1_compile(compiled, case):
    assert _kernels(compiled, case)


def test_main_streams_are_vectors_for_any_size(compiled):
    """An MSE of odd length and a segmentation loss of odd width (rows that start anywhere)
    still load and store 16 bytes at a time on their main path."""
    for case, kernel_name in (("mse_f32_odd_n", "mse_fwd_kernel"), ("seg_odd_w", "seg_fwd_kernel")):
        (kernel,) = [k for k in _kernels(compiled, case) if k["name"] == kernel_name]
        assert kernel["vector_loads"] and kernel["vector_stores"], case


def test_loss_backward_divides_no_int64(compiled):
    """(A 64-bit division is a subroutine call, and was one an element.)"""
    for case in ("backward_f64", "backward_groups", "backward_long_groups"):
        (kernel,) = _kernels(compiled, case)
        assert kernel["int64_divisions"] == 0, (case, kernel["int64_divisions"])


# --- the child process --------------------------------------------------------------------


def _ptx_facts(name, signature, ptx):
    entry = ptx[ptx.index(".entry " + name):]
    params = re.findall(r"\.param \.(\w+)[^,)]*?_param_(\d+)", entry[:entry.index(")")])
    names = [k for k, v in signature.items() if v != "constexpr"]
    return {"name": name,
            "params": {names[int(i)]: "." + ty for ty, i in params if int(i) < len(names)},
            "f64_arithmetic": len(re.findall(r"\b(?:add|sub|mul|fma\.rn|div\.rn|max|min|abs|neg)\.f64\b", ptx)),
            "vector_loads": bool(re.search(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx)),
            "vector_stores": bool(re.search(r"st\.global(?:\.\w+)*\.v4\.b32", ptx)),
            "int64_divisions": len(re.findall(r"\b(?:div|rem)\.[su]64\b", ptx))}


def _child(names):
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    from pylosses.triton_kernels import common, mse, segmentation

    target = GPUTarget("cuda", 90, 32)

    class StandInDriver:  # what JITFunction.run asks of the driver before it compiles
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return target

    compiled = []

    def compile_instead_of_launch(self, key, signature, device, constexprs, options, attrs, warmup):
        kernel = triton.compile(self.ASTSource(self, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
        compiled.append(_ptx_facts(self.__name__, signature, kernel.asm["ptx"]))
        return None  # nothing runs; the launcher carries on with its (unwritten) outputs

    driver.set_active(StandInDriver())
    JITFunction._do_compile = compile_instead_of_launch
    out = {}
    for name in names:
        kind, dtype, args = CASES[name]
        dtype = getattr(torch, dtype)
        compiled.clear()
        try:
            if kind == "seg":
                x, t = torch.rand(args["shape"], dtype=dtype), torch.rand(args["shape"], dtype=dtype)
                segmentation.seg_loss_fwd(x, t, 0.7, 0.3, len(args["shape"]) - 2, args["logits"], 1, True, True, False)
            elif kind == "mse":
                mse.mse_loss_fwd(torch.rand(args["n"], dtype=dtype), torch.rand(args["n"], dtype=dtype), 1, True)
            else:
                common.loss_backward(torch.rand(args["k"], dtype=dtype), torch.rand(args["n"], dtype=dtype), 0.5, dtype)
        except Exception as error:  # a kernel that does not compile: the case's tests fail with it
            out[name] = f"{type(error).__name__}: {str(error)[-2000:]}"
        else:
            out[name] = list(compiled)
    print(json.dumps(out))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
