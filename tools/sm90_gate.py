"""The sm_90 compiled-code gate: what the GPU would execute, read without a GPU.

    python tools/sm90_gate.py [--out DIR] [--only triton|cuda] [--quick]

Triton: every kernel variant that pylosses' launchers produce is compiled for sm_90 *through
the launchers' own code path*. A stand-in for Triton's active driver reports an sm_90 target
and launches nothing, so each launch is specialised exactly as on a GPU (integers equal to 1,
integers divisible by 16, 16-byte-aligned pointers, the scalar parameters' types) and compiled
by Triton's own ptxas; the stand-in keeps the cubin and the launch. CUDA: every kernel
instantiation in the built extension (pylosses/_C*.so, compiled for sm_90 by setup.py).

Each kernel's SASS (cuobjdump) gives its registers, spills (local memory), shared memory and
memory instructions, and the hot loop's instruction count. The gate fails on: a compile error,
a spill, fewer resident warps per SM than the kernel's launch assumes, no 128-bit global loads
or stores on a vector path, more hot-loop instructions per element than the memory-bound
budget, and a float64 launch whose scale factors arrive as fp32; ALLOWED lists the exceptions,
each with its reason. It writes table.md and table.json under DIR
(benchmarks/results/sm90-static/ by default).

The budget: an H200 issues about 132 SMs x 1.98 GHz x 128 lanes = 33.5 T thread instructions
a second against about 4.3 TB/s of copy bandwidth, so a kernel stays memory-bound while it
spends under 7.8 instructions per byte it must move. The predicted fraction of copy bandwidth,
min(1, budget / instructions), is a prediction from static code, not a measurement: the hot
loop is counted as written (every instruction in it, also those on rarely taken branches).
"""

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Hopper (sm_90) per-SM limits, from the CUDA occupancy rules
SM_REGISTERS = 65536
SM_MAX_WARPS = 64
SM_MAX_BLOCKS = 32
SM_SHARED_BYTES = 233472  # 228 KiB
BLOCK_SHARED_RESERVED = 1024
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
INSTRUCTIONS_PER_BYTE = 33.5e12 / 4.3e12  # the memory-bound budget on an H200 (about 7.8)

# Resident warps per SM that each kernel's launch assumes (at least): the memory-bound kernels
# need half the SM's warps to hide DRAM latency; the segmentation kernel keeps three rows of
# state a thread and is sized for a quarter.
REQUIRED_WARPS = {"mse": 32, "loss_backward": 32, "seg": 16, "sum": 8, "region": 32, "region_backward": 32,
                  "ce": 32, "softmax_region": 16, "softmax_region_backward": 16, "softmax_tv": 16}

# What the gate lets pass, each with its reason: (kernel family, rule, a text the variant holds or
# "" for every variant, why). The segmentation loss's instruction count is the subject of its own
# issue (the instruction floor): reported here, gated there.
ALLOWED = [
    ("seg", "instructions", "target", "Triton (its labels name the target; issue 13 measured): a float32 log "
     "in plain arithmetic is about 19 instructions (libdevice's polynomial: Triton's language reaches MUFU.LG2 "
     "only by inline assembly or libdevice, which the interpreter that runs the tests cannot run), one a hard "
     "label, two a soft one, beside the TV's signs and the gradient: about 69 (probabilities) and 87 (logits) an "
     "element in float32 with bool targets, where issue 13 aimed at 40. The logits form was 73 before the H200 "
     "run's fixes: signs from the logits (+6) and an accurate exp(-|x|), about 2 ulp where 2**(-|x| log2 e) was "
     "60 ulp at |x| = 60 (+8) Rows of W not a multiple of 16 (odd W) "
     "are tiles without a loop, counted whole: both copies of the tile's code (the tile with the tensor's last "
     "row has its own) over one tile's elements"),
    ("seg", "instructions", "", "CUDA: the segmentation loss's per-element math, issue 13 (the instruction floor) "
     "sets its target; float32 is about 90 (probabilities) and 138 (logits) an element with bool targets: the TV's "
     "four signs and differences (about 30), the tile's edges, the accurate logs of soft labels and of the logits form"),
    *(("seg", "calls", f64, "the slow path of a float64 IEEE division (extreme operands only); float32 takes "
       "MUFU.RCP and a Newton step, without one") for f64 in ("double", "float64")),  # CUDA's name, Triton's
    ("loss_backward", "instructions", "<1,", "the one-element fallback for pointers that are not 16-byte aligned: "
     "loop overhead on every element; aligned tensors take the vector path"),
    ("region", "instructions", "float64 logits", "Triton: float64's sigmoid is libdevice's double exp and a double "
     "division, about 70 instructions an element of double-precision arithmetic (float32's takes 8); float64 "
     "checks, float32 and 16-bit floats train"),
    *((family, "calls", "float64 logits", "Triton: the slow path of the float64 IEEE division of the sigmoid, "
       "1 / (1 + exp(-|x|)), whose divisor in [1, 2] never takes it") for family in ("region", "region_backward")),
    ("region", "instructions", "rows", "Triton: planes of at most 256 elements are rows of a tile; a row's four "
     "sums are added across the threads that hold it and stored, and a sample mask's row is found by a division, "
     "for the row's few elements: 29 an element with bfloat16 logits, uint8 targets and a sample mask (3 bytes: "
     "23.4). S not a power of 2 pads the rows to the next one (35 elements in 64 lanes: 80 an element)"),
    ("region", "instructions", " bce mask", "Triton, the region sums with DiceBCE's two BCE sums (mode + 4): each "
     "logit's accurate softplus log(1 + exp(-|x|)) (exp(-|x|) reduced by k ln 2, a log in plain arithmetic and its "
     "rounding residue) and two more sums add about 25 instructions an element to Dice's: float32 54.5 against 39 "
     "with a bool target (predicted 71% of copy bandwidth), 16-bit inputs 54 against 23.4 (43%); float targets and "
     "the gradient pass are within budget. The pass stands in for a whole pass of the segmentation loss's kernel "
     "over the same logits and targets (the composed path)"),
    ("region", "vector", "rows S=35", "Triton: planes of fewer than 256 elements, S not a power of 2 nor a multiple "
     "of 16: a plane starts anywhere, so the rows' loads are scalar (larger planes take aligned blocks after a head)"),
    # CUDA region sums (region) and their backward (region_backward): <vec, mode, sigmoid, bce, input, target>
    *((family, "instructions", f"true, false, c10::{half}", "CUDA, the sigmoid of a 16-bit input: math::sigmoid (shared with "
       "the CPU and the segmentation kernel: CUDA's accurate expf, MUFU.RCP and a Newton step, a select) is about 15 "
       "instructions an element, where a 16-bit input with a bool or uint8 target has a budget of 23.4 (the sums) or "
       "39 (the backward): the sums take 30 to 37 an element (predicted 64% to 78% of copy bandwidth), the backward "
       "32 to 51 (92% or more); float32 inputs, and every dtype without the sigmoid, pass")
      for family in ("region", "region_backward") for half in ("Half", "BFloat16")),
    *((family, rule, f"true, {bce}, {f64}", why) for family in ("region", "region_backward")
      for bce in ("false", "true")
      for f64 in ("double,", "float, double>", "c10::Half, double>", "c10::BFloat16, double>")
      for rule, why in (("instructions", "CUDA, float64 arithmetic with the sigmoid: a float64 exp and IEEE division "
                         "are about 85 of the 105 to 139 instructions an element (predicted 62% of copy bandwidth or "
                         "more); without the sigmoid float64 takes 15 to 50"),
                        ("calls", "the slow path of the float64 IEEE division in the sigmoid (extreme operands "
                         "only); float32 takes MUFU.RCP and a Newton step, without one"))),
    # CUDA region kernels with DiceBCE's two BCE sums (mode + 4: <vec, mode, true, true, input, target>)
    *((family, "instructions", "true, true,", "CUDA, the region sums with DiceBCE's two BCE sums (mode + 4): each "
       "logit's softplus log(1 + exp(-|x|)) (MUFU.LG2, or the series near 0, chosen by a select, as the "
       "segmentation loss's) and two more sums add about 28 instructions an element to Dice's: float32 55 to 63 "
       "(against 39 with a bool or uint8 target: predicted 62% to 70% of copy bandwidth; float targets within "
       "budget), 16-bit inputs 54 to 64 (37% to 86%); the backward 35 to 78 (60% or more). The pass replaces a "
       "whole pass of the segmentation loss's kernel over the same logits and targets (the composed path)")
      for family in ("region", "region_backward")),
    *((family, "occupancy", "true, true,", "CUDA, the region kernels with DiceBCE's BCE sums, 3 blocks an SM (85 "
       "registers) where they spill at 64 (float64, 16-bit packs of 8, one element at a time): 70 to 80 registers, "
       "24 warps an SM where the launch assumes 32; float32 packs of 4 keep 4 blocks (64 registers, 32 warps)")
      for family in ("region", "region_backward")),
    ("region_backward", "vector", "(RegionMode)0, false", "CUDA, linear sums without the sigmoid and a bool or uint8 "
     "target: the input's gradient g0 t + g1 does not depend on the input, which the kernel then does not read, and "
     "the widest stream it reads is the target's, a byte an element"),
    ("seg", "occupancy", "64x128 float16 target float logits grad ", "Triton, float16 logits with float targets: "
     "138 (grad both) and 142 (grad input) registers since the TV's signs are taken from the logits and exp(-|x|) "
     "is reduced by k ln 2 (the fixes of the H200 run's float16 TV gradients and BCE at large |x|), 12 warps an SM "
     "where the walk assumes 16; to be brought back"),
    # CUDA cross-entropy (ce): <pixels a pack, classes a thread holds (0: the two-pass path), input, label>
    ("ce", "occupancy", "double,", "CUDA, float64 cross-entropy: 104 to 106 registers (at 64 it spills, even a class at a "
     "time), so 2 blocks (16 warps) an SM where the float32 and 16-bit paths keep 32; float64 checks, float32 and "
     "16-bit train"),
    *(("ce", "instructions", f"<1, {c}, c10::BFloat16", "CUDA, the one-pixel fallback of the cross-entropy (a plane "
       "that is not a multiple of the pack, or misaligned pointers) with bfloat16 logits: 39 to 48 instructions an "
       "element against budgets of 32 to 47 (predicted 69% to 99% of copy bandwidth; 36 to 43 before the accurate "
       "path for small losses); aligned planes take packs")
      for c in (4, 8)),
    # Triton cross-entropy: labels "C=... dtype target ... grad on|off [weight] [smoothing]"
    *(("ce", "occupancy", text, "Triton, the cross-entropy with class weights or label smoothing, or a 16-bit input "
       "above 32 classes: each thread carries its pixels' state (8 pixels of a 16-bit input: w_t, the smoothing's "
       "sums, the online softmax's) beside its logits; at .maxnreg 64 they spill, so they run unlimited: float32 71 "
       "to 80 registers (25 to 28 warps an SM), bfloat16 79 to 146 (13 to 25 warps) where the launch assumes 32; "
       "without weights and smoothing float32 keeps 32 at every C, bfloat16 up to 32 classes")
      for text in (" weight", "smoothing", "C=40 bfloat16")),
    *(("ce", "instructions", text, "Triton, the cross-entropy of a bfloat16 input with class weights or label "
       "smoothing: the per-pixel work (labels, log, reciprocal, w_t, the smoothing's sums), copied in each lane that "
       "shares a pixel, over few classes a thread: 33 to 56 instructions an element with the gradient against a "
       "budget of 31.2, 26.5 without it against 15.6 (predicted 56% to 93% of copy bandwidth); without weights and "
       "smoothing bfloat16 passes (25 to 30), float32 passes with them")
      for text in ("bfloat16 target int64 mean grad on", "bfloat16 target uint8 sum grad off weight")),
    # Triton softmax_region_sums (softmax_region) and its backward (softmax_region_backward): labels
    # "C=... dtype target ... mode [mask] [ce] [weight] [smoothing] [backward]"; measured with Triton
    # 3.8 on (2, C, 64, 64) when they were added
    *(("softmax_region", "instructions", text, "Triton, the softmax region sums: the softmax of each pixel (its "
       "maximum, an exponential and a reciprocal a class, lanes' shuffles) and three sums a class read only the "
       "logits, so their budget is the input's bytes alone, with no gradient written (15.6 for 16-bit inputs, 31.2 "
       "for float32, 62.3 for float64): float32 takes 30 to 35 instructions an element without the cross-entropy "
       "(C=14: 34.8, predicted 90% of copy bandwidth), 31 to 69 with it, weights and smoothing (the cross-entropy's "
       "per-pixel log and w_t, copied in each lane of a pixel); bfloat16 32 to 74 and float16 65 (predicted 21% to "
       "49%), float64 113 (55%); the forward is one of two passes, the backward within budget but for bfloat16")
      for text in ("C=14 float32", " ce", "bfloat16", "float16", "float64")),
    *(("softmax_region", "occupancy", text, "Triton, the softmax region sums: each thread carries three sums of "
       "its classes across its tiles beside the tile's logits and exponentials; unlimited rather than spilling: "
       "float32 with the cross-entropy 89 to 102 registers (19 to 21 warps an SM), bfloat16 72 to 168 (12 to 28), "
       "float16 with the cross-entropy 140 (14), float64 140 (14), where the gate asks for 16 (the launch was sized for 32); float32 without "
       "the cross-entropy keeps 64 registers and 32 warps")
      for text in (" ce", "bfloat16", "float16", "float64")),
    *(("softmax_region_backward", "occupancy", text, "Triton, the softmax region gradient: the tile's "
       "probabilities, the sums' gradients g0 and g1 of its classes and sum_k p_k G_k, with the cross-entropy's "
       "weights and factors: float32 with the cross-entropy 78 to 92 registers (21 to 25 warps an SM), float32 "
       "above 32 classes 72 (28), bfloat16 80 to 162 (12 to 25), float64 106 (18), where the gate asks for 16 (the launch was sized for 32); "
       "float32 up to 32 classes without weights keeps 62 to 64 registers and 32 warps")
      for text in (" ce", "C=40", "bfloat16", "float64")),
    ("softmax_region_backward", "occupancy", "C=14 float32 target uint8 linear backward", "Triton 3.6 (the GPU "
     "machine's version, the CI leg): 68 registers, 28 warps an SM where the launch assumes 32; Triton 3.8 "
     "compiles the same kernel to 64 registers and 32 warps (the other variants' numbers above are 3.8's; 3.6's lie "
     "within about 15 registers and 3 instructions an element of them)"),
    ("softmax_region_backward", "instructions", "bfloat16", "Triton, the softmax region gradient of a bfloat16 "
     "input up to 32 classes: 34.5 instructions an element (C=14) and 40 to 49 with the cross-entropy's weights "
     "and smoothing, against a budget of 31.2 (predicted 63% to 90% of copy bandwidth); above 32 classes 19 to 27, "
     "and float32 19 to 47 against 62.3, pass"),
    *((family, "calls", "float64", "Triton: the slow path of the float64 IEEE division of 1 / (the sum of "
       "exponentials), a divisor in [1, C] that never takes it") for family in ("softmax_region",
                                                                              "softmax_region_backward")),
    # Triton softmax_tv_fwd (softmax_tv): labels "shape C=... dtype reduction grad on|off"; Triton 3.8
    ("softmax_tv", "instructions", "C=", "Triton, the walk (issue 15): a program owns lanes of slabs of "
     "slices along the outermost kept axis, a thread 16 bytes of a slice (W neighbours inside it by split/join, its "
     "two outer ones loaded) at 2 positions along the walked axis in 2-D (1 in 3-D and float64: registers, 16 warps) "
     "plus a halo slice before and after, 3-D H neighbours loaded; three sweeps over the classes (max and sum of "
     "exponentials, the loss and sum_k G_k p_k, the gradient), each tracked probability taken once a sweep: 2.5 "
     "exponentials an element a sweep in 2-D, 5.5 in 3-D, where the first version took 5 and 7. Counted over all "
     "its sweeps with the gradient: float32 102.2 (2-D) and 197.8 (3-D) instructions an element against 62.3 "
     "(predicted 61% and 31% of copy bandwidth; the first version 168 and 234.5), 42.2 without it (C=4, against "
     "31.2: 74%); 16-bit 108 to 213 against 31.2 to 46.7 (15% to 43%); float64 680 (2-D) and 1010 (3-D) "
     "(libdevice's exp; 803 and 1120 before); 3-D bfloat16 without it (C=40) 86.0, 80.2 before (a position a "
     "thread and its halo); planes whose slices are not a multiple of a vector, a pixel a thread "
     "at 4 positions: 155 (odd W, 203 before). The exponentials of the halo and of the loaded neighbours and the "
     "online softmax are most of what remains"),
    ("softmax_tv", "vector", "float16", "Triton, softmax_tv of a 16-bit input: 4 pixels a thread (64-bit accesses): "
     "8 (128-bit) would double the state a thread carries (its vector's pixels, halo and neighbours, 108 to 128 "
     "registers with 4); the vector's outer neighbours' loads are scalar whatever the width, and the kernel is "
     "bound by its instructions"),
    ("softmax_tv", "vector", "odd W", "Triton, softmax_tv on planes whose slices (of the walked "
     "axis) are not a multiple of 4 pixels: a thread takes a pixel, and its loads and stores are scalar"),
    ("softmax_tv", "occupancy", "3-D C=14 float64", "Triton, softmax_tv of a float64 input in 3-D: the online "
     "softmax's state of a vector of 2 pixels in 3 slices (its halo), its 2 outer W and 4 H neighbours (12 pixels), "
     "146 registers (12 warps an SM) where the gate asks for 16; float64 checks, float32 and 16-bit train"),
    # (after the Triton entries: these match every variant, and the first match is the reason)
    # CUDA fused softmax region sums (softmax_region) and their backward: <class bound (0: chunked), mode, input>
    ("softmax_region", "instructions", "", "CUDA, the fused softmax region sums, <class bound, mode, input, with "
     "the cross-entropy>: per-lane sums (a class's term of p in registers, the label's p and count in the lane's "
     "own column of shared memory), added across the warp once a run of tiles; expf from MUFU.EX2. float32 without "
     "the cross-entropy is within budget (21 to 29 instructions an element against 31 to 32); with it 38.5 to 41 "
     "(the log, w_t, sum w_c y_c, and the accurate path for small losses: the others' sum, a series; the 8-class "
     "path's class weights in registers: predicted 78% to 82% of copy bandwidth); 16-bit inputs, whose budget is "
     "half, 22 to 30 without it (55% to 72%) and 40 to 42.5 with it (39% to 40%); float64 100 to 117 (54% to 63%). "
     "The "
     "chunked path's hot loop as the gate finds it is its max sweep (13 to 16), not its sums sweep, a warp "
     "butterfly of each class's sums a tile of 32 pixels: about 30 instructions a class and pixel (C above 32 only): "
     "its 'ok' is not a prediction of its speed"),
    ("softmax_region_backward", "instructions", "", "CUDA, the fused softmax region backward: a thread a pixel, the "
     "softmax, sum_k p_k G_k and the gradient; on the register path (up to 8 classes) G_c and the class weights "
     "kept in registers, expf from MUFU.EX2: float32 55 to 62 instructions an element against 63 and float64 119 to "
     "134 against 126 pass (predicted 94% or more of copy bandwidth); 16-bit inputs 61 to 68 against 32 (47% to "
     "52%). The chunked path (above 8 classes) reads each class's logit three times and its hot loop as the gate "
     "finds it is the max sweep: its 16-bit 40 to 45 against 31 (69% to 78%)"),
    # CUDA softmax_tv_fwd (softmax_tv): <spatial dims, input>
    ("softmax_tv", "instructions", "", "CUDA, the ring version (issue 15): a thread walks 8 positions of a column "
     "(4 in float64) plus a halo, the softmax's statistics once, then two sweeps over the classes (the loss and "
     "sum_k G_k p_k; the gradient), W neighbours by warp shuffles (2 of 32 lanes a halo), 3-D H neighbours through "
     "shared memory (2 of 8 warps a halo): about 4 exponentials an output element in 2-D, 5.3 in 3-D. Counted over "
     "its four class loops, per output element: float32 99.3 (2-D) and 164.3 (3-D) against 62.3 (predicted 63% "
     "and 38% of copy bandwidth; the first version, a thread a pixel, 187 and 266; before branch-free masks, 136.5 "
     "and 233.8); 16-bit 127 to 205 against 31.2 and 46.7 (15% to 37%); float64 313 and 468 against 124.7 (27% to "
     "40%). The sweeps select, never branch (masks as bits set once an item, a missing slot's p 0 through its "
     "1 / sum, |d| as the masked sign times d); the sign and selection arithmetic of the axes' terms, twice (loss "
     "sweep and gradient sweep), and the 64-bit addresses of the ring's loads are most of what is left"),
    *((family, "calls", text, "the slow path of the float64 IEEE division 1 / sum (math::preciprocal in "
       "double; extreme operands only, the sum lies in [1, C])")
      for family, text in (("softmax_region", "double,"), ("softmax_region_backward", "double>"))),
]


def allowance(family, rule, variant):
    """Why ALLOWED lets this pass, or None."""
    return next((why for fam, r, text, why in ALLOWED if fam == family and r == rule and text in variant), None)


@dataclasses.dataclass
class Variant:
    """One compiled kernel and what the gate reads from it."""

    backend: str  # triton or cuda
    family: str  # mse, seg, loss_backward, sum
    kernel: str
    variant: str  # what the launch (or the template instantiation) was
    threads: int = 0
    registers: int = 0
    stack_bytes: int = 0  # local memory a thread where the code spills to it (ptxas puts spills there)
    local_ops: int = 0  # STL/LDL instructions: spill traffic
    shared_bytes: int = 0
    resident_warps: int = 0
    load_bits: int = 0  # the widest global load and store in the kernel
    store_bits: int = 0
    vector_path: bool = False  # whether 128-bit global loads are required
    writes_stream: bool = False  # whether it writes a value an element (then wide stores are required)
    load_bits_needed: int = 128  # what one thread's elements of the widest read stream fill, at most 128
    store_bits_needed: int = 128  # what one thread's elements of the written stream fill, at most 128
    hot_instructions: int = 0  # in the hot loop (or the whole kernel where it has none)
    hot_calls: int = 0  # subroutine calls in it
    hot_instructions_extra: int = 0  # of the subroutines a loop-less kernel calls
    elements_per_pass: float = 0.0  # elements a thread handles in one pass of it
    bytes_per_element: float = 0.0  # compulsory traffic
    f64_params: bool = True  # float64 launches: the float scalars are .f64
    error: str = ""
    failures: list = dataclasses.field(default_factory=list)
    allowed: list = dataclasses.field(default_factory=list)

    @property
    def instructions_per_element(self):
        return self.hot_instructions / self.elements_per_pass if self.elements_per_pass else None

    @property
    def budget(self):
        return INSTRUCTIONS_PER_BYTE * self.bytes_per_element if self.bytes_per_element else None

    @property
    def predicted_copy_fraction(self):
        ipe, budget = self.instructions_per_element, self.budget
        if not ipe or not budget:
            return None
        return min(1.0, budget / ipe)


# ---------------------------------------------------------------------------------------------
# SASS


def find_tool(name):
    """cuobjdump / nvdisasm: on the PATH, in CUDA_HOME, or from the pip packages
    nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm (site-packages/nvidia/cu*/bin)."""
    found = shutil.which(name)
    if found:
        return found
    places = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name)]
    for path in sys.path:
        places += glob.glob(os.path.join(path, "nvidia", "cu*", "bin", name))
    for place in places:
        if os.path.isfile(place) and os.access(place, os.X_OK):
            return place
    raise FileNotFoundError(f"{name} not found: pip install nvidia-cuda-cuobjdump (or put the CUDA toolkit's "
                            f"bin on the PATH)")


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_RESOURCES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_sass(text):
    """{function: [(address, instruction text)]} from `cuobjdump -sass`."""
    functions, current = {}, None
    for line in text.splitlines():
        m = _FUNCTION.match(line)
        if m:
            current = functions.setdefault(m.group(1), [])
            continue
        m = _INSTRUCTION.search(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return functions


def parse_resources(text):
    """{function: (registers, stack bytes, shared bytes, local bytes)} from `cuobjdump -res-usage`."""
    return {m.group(1): tuple(int(m.group(i)) for i in range(2, 6)) for m in _RESOURCES.finditer(text)}


def opcode(instruction):
    """The opcode with its modifiers, without a predicate: '@!P0 LDG.E.128 R8, ...' -> 'LDG.E.128'."""
    words = instruction.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0] if words else ""


def access_bits(op):
    """The width of a global load or store in bits (LDG.E.128 -> 128, STG.E.U8 -> 8), else 0."""
    if not (op.startswith("LDG") or op.startswith("STG")):
        return 0
    for part in op.split(".")[1:]:
        if part in ("128", "64"):
            return int(part)
        if part in ("U8", "S8"):
            return 8
        if part in ("U16", "S16"):
            return 16
    return 32


def loops(instructions):
    """(start, end) address ranges of the loops: a branch back to an earlier address."""
    found = []
    for address, text in instructions:
        m = re.match(r"(?:@!?U?P\w+\s+)?BRA(?:\.\w+)*\s+(0x[0-9a-f]+)", text)
        if m:
            target = int(m.group(1), 16)
            if target < address:
                found.append((target, address))
    return found


def innermost_loading_loops(instructions):
    """(start, end) of the loops that load from global memory and hold no inner loop that does."""
    def loads(start, end):
        return any(opcode(t).startswith("LDG") for a, t in instructions if start <= a <= end)

    ranges = [r for r in loops(instructions) if loads(*r)]
    return [(s, e) for s, e in ranges if not any(s < s2 and e2 < e for s2, e2 in ranges)]


def hot_loop(instructions):
    """The instructions of the hot loop: of the innermost loops that load from global memory,
    the largest; the whole function when no loop loads. A CALL in it counts as one instruction:
    what it calls (a 64-bit division, a division's slow path) runs only for some operands, so the
    gate reports calls apart (see judge)."""
    innermost = innermost_loading_loops(instructions)
    if innermost:
        start, end = max(innermost, key=lambda r: r[1] - r[0])
        return [t for a, t in instructions if start <= a <= end]
    return [t for _, t in instructions if opcode(t) != "NOP"]


def _subroutine(instructions, call):
    """The instructions a CALL runs: from its target to the first RET."""
    m = re.search(r"CALL\.\w+(?:\.\w+)*\s+(0x[0-9a-f]+)", call)
    if not m:
        return []
    target, found = int(m.group(1), 16), []
    for address, text in instructions:
        if address >= target:
            found.append(text)
            if opcode(text).startswith("RET"):
                break
    return found


def resident_warps(registers, threads, shared_bytes):
    """Warps an SM keeps resident for a kernel of these resources (sm_90 occupancy rules)."""
    warps_per_block = max(1, -(-threads // 32))
    per_warp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_registers = (SM_REGISTERS // per_warp) // warps_per_block
    by_shared = SM_SHARED_BYTES // (shared_bytes + BLOCK_SHARED_RESERVED)
    by_warps = SM_MAX_WARPS // warps_per_block
    return min(by_registers, by_shared, by_warps, SM_MAX_BLOCKS) * warps_per_block


def read_cubin_like(path):
    """(sass functions, resources) of a cubin, or of a shared library's embedded sm_90 code."""
    cuobjdump = find_tool("cuobjdump")
    env = {**os.environ, "NVDISASM_PATH": os.path.dirname(find_tool("nvdisasm"))}  # -sass runs nvdisasm
    sass = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True, check=True, env=env).stdout
    res = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    return parse_sass(sass), parse_resources(res)


def fill_from_sass(v, instructions, resources):
    regs, stack, shared, local = resources
    ops = [opcode(t) for _, t in instructions]
    v.registers = regs
    # a spill is local-memory traffic: STL/LDL (a call's stack frame alone is not one)
    v.local_ops = sum(o.startswith(("STL", "LDL")) for o in ops)
    v.stack_bytes = stack + local if v.local_ops else 0
    v.shared_bytes = max(v.shared_bytes, shared)
    v.resident_warps = resident_warps(v.registers, v.threads, v.shared_bytes)
    v.load_bits = max([access_bits(o) for o in ops if o.startswith("LDG")], default=0)
    v.store_bits = max([access_bits(o) for o in ops if o.startswith("STG")], default=0)
    hot = hot_loop(instructions)
    calls = [t for t in hot if opcode(t).startswith("CALL")]
    if len(hot) < sum(opcode(t) != "NOP" for _, t in instructions):  # a loop, not the whole kernel
        v.hot_calls = len(calls)  # a call in a loop runs every pass
    else:
        # no loop: the kernel runs once a program, and so does what it calls (a 64-bit division
        # to find a group, say): counted in full, spread over the program's elements
        v.hot_instructions_extra = sum(len(_subroutine(instructions, c)) for c in calls)
    v.hot_instructions = len(hot) + v.hot_instructions_extra


def judge(v):
    """Fills v.failures (and v.allowed: rules ALLOWED lets pass) from the gate's rules."""
    broken = []
    if v.error:
        broken.append(("compile", v.error))
    else:
        if v.local_ops:
            broken.append(("spills", f"{v.local_ops} local-memory instructions, {v.stack_bytes} B a thread"))
        need = REQUIRED_WARPS.get(v.family, 0)
        if v.resident_warps < need:
            broken.append(("occupancy", f"{v.resident_warps} resident warps an SM, the launch assumes {need} "
                                        f"({v.registers} registers, {v.threads} threads)"))
        if v.vector_path and v.load_bits < v.load_bits_needed:
            broken.append(("vector", f"widest global load {v.load_bits} bits on a vector path"))
        if v.vector_path and v.writes_stream and v.store_bits < v.store_bits_needed:
            broken.append(("vector", f"widest global store {v.store_bits} bits on a vector path"))
        ipe, budget = v.instructions_per_element, v.budget
        if ipe is not None and budget is not None and ipe > budget:
            broken.append(("instructions", f"{ipe:.1f} instructions an element, budget {budget:.1f}"))
        if v.hot_calls and v.family != "sum":
            broken.append(("calls", f"{v.hot_calls} subroutine calls in the hot loop (64-bit division, a slow path)"))
        if not v.f64_params:
            broken.append(("params", "a float64 launch takes fp32 scale factors"))
    for rule, why in broken:
        reason = allowance(v.family, rule, v.variant)
        (v.allowed if reason else v.failures).append(f"{rule}: {why}" + (f" (allowed: {reason})" if reason else ""))


# ---------------------------------------------------------------------------------------------
# Triton: the launchers, under a stand-in driver


class _Function:
    """What the stand-in's load_binary hands Triton as a loaded kernel: its name and cubin."""

    def __init__(self, name, cubin):
        self.name, self.cubin = name, cubin


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        # (module, function, registers, spills, max threads): the registers come from the cubin
        return None, _Function(name, kernel), 0, 0, 1024

    def get_device_properties(self, device):
        return {"max_shared_mem": SM_SHARED_BYTES - BLOCK_SHARED_RESERVED, "multiprocessor_count": 132,
                "max_num_regs": SM_REGISTERS, "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 3201000,
                "mem_bus_width": 6144}

    def unload_module(self, module):
        pass


class Sm90StandIn:
    """Triton's active driver for the gate: an sm_90 device that compiles and launches nothing.
    Each launch is recorded with its kernel's source, metadata, cubin, grid and arguments."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)
        self.utils = _Utils()
        self.launches = []

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def launcher_cls(self, src, metadata):
        def launch(grid_x, grid_y, grid_z, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook,
                   *args):
            self.launches.append({"src": src, "metadata": metadata, "cubin": function.cubin,
                                  "grid": (grid_x, grid_y, grid_z), "args": args})

        return launch


@contextlib.contextmanager
def standin_driver():
    from triton.runtime import driver

    standin = Sm90StandIn()
    previous = getattr(driver, "_active", None)  # reset_active() would look for a real GPU
    driver.set_active(standin)
    try:
        yield standin
    finally:
        driver._active = previous


def _tensor(shape, dtype, misaligned=False, channels_last=False):
    """A CPU tensor of this shape; misaligned: its data starts one element past a 16-byte boundary."""
    import torch

    n = 1
    for s in shape:
        n *= s
    if misaligned:
        base = torch.zeros(n + 1, dtype=dtype)
        return base[1:].view(shape)
    t = torch.zeros(shape, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")
SEG_SHAPES = {  # name: (shape, spatial_dims)
    "64x128": ((2, 1, 64, 128), 2),
    "H=1": ((2, 1, 1, 64), 2),
    "W=1": ((2, 1, 48, 1), 2),
    "odd W": ((2, 1, 33, 45), 2),
    "3-D": ((2, 1, 6, 32, 64), 3),
}
MSE_SIZES = {"n%16=0": (4, 4096), "odd n": (3, 1001)}
# (B, C, spatial...): planes of chunks, S a multiple of 16 or not (a head before the aligned
# blocks); planes as rows of a tile, S a power of 2 (16, or 1: no spatial axis) or not
REGION_SHAPES = {"64x64": (2, 3, 64, 64), "odd S": (2, 3, 33, 45), "rows S=16": (64, 3, 4, 4),
                 "rows S=1": (256, 3), "rows S=35": (64, 3, 5, 7)}


def triton_cases(quick=False):
    """(label, family, call) for every launcher variant the gate compiles: call() launches it."""
    import torch

    from pylosses.triton_kernels import common, cross_entropy, mse, region, segmentation, softmax_region, softmax_tv

    dtypes = [getattr(torch, d) for d in DTYPE_NAMES]
    cases = []

    def seg_case(shape_name, dtype, target_kind, logits, grads, misaligned=False):
        shape, spatial = SEG_SHAPES[shape_name]
        t_dtype = {"float": dtype, "bool": torch.bool, "uint8": torch.uint8}[target_kind]
        label = (f"{shape_name}{' misaligned' if misaligned else ''} {str(dtype)[6:]} target {target_kind} "
                 f"{'logits' if logits else 'probs'} grad {grads}")

        def call():
            x = _tensor(shape, dtype, misaligned)
            t = _tensor(shape, t_dtype, misaligned)
            segmentation.seg_loss_fwd(x, t, 0.7, 0.3, spatial, logits, 1, grads in ("input", "both"),
                                      grads == "both", False)

        cases.append((label, "seg", call, not misaligned))

    for dtype in dtypes:
        for logits in (False, True):
            for target_kind in ("float", "bool", "uint8"):
                seg_case("64x128", dtype, target_kind, logits, "input")
            seg_case("64x128", dtype, "float", logits, "both")
            seg_case("64x128", dtype, "bool", logits, "none")
    if not quick:
        for shape_name in ("H=1", "W=1", "odd W", "3-D"):
            for dtype in (torch.float32, torch.bfloat16):
                seg_case(shape_name, dtype, "float", False, "both")
                seg_case(shape_name, dtype, "bool", True, "input")
        seg_case("64x128", torch.float32, "float", False, "both", misaligned=True)
        seg_case("odd W", torch.float64, "float", True, "both")

    def mse_case(size_name, dtype, reduction, grad, misaligned=False):
        shape = MSE_SIZES[size_name]
        label = (f"{size_name}{' misaligned' if misaligned else ''} {str(dtype)[6:]} "
                 f"{['none', 'mean', 'sum'][reduction]} grad {'on' if grad else 'off'}")

        def call():
            mse.mse_loss_fwd(_tensor(shape, dtype, misaligned), _tensor(shape, dtype, misaligned), reduction, grad)

        cases.append((label, "mse", call, not misaligned))

    for dtype in dtypes:
        for size_name in MSE_SIZES:
            mse_case(size_name, dtype, 1, True)
        mse_case("n%16=0", dtype, 0, True)
        mse_case("n%16=0", dtype, 1, False)
    mse_case("n%16=0", torch.float32, 1, True, misaligned=True)

    def backward_case(size_name, saved_dtype, out_dtype, per_sample):
        shape = MSE_SIZES[size_name]
        label = (f"{size_name} saved {str(saved_dtype)[6:]} -> {str(out_dtype)[6:]} "
                 f"grad_output {'per sample' if per_sample else 'scalar'}")

        def call():
            go = torch.ones(shape[0] if per_sample else (), dtype=out_dtype)
            common.loss_backward(go, _tensor(shape, saved_dtype), 1.0, out_dtype)

        cases.append((label, "loss_backward", call, True))

    for saved, out in ((torch.float32, torch.float32), (torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16),
                       (torch.float64, torch.float64)):
        for size_name in MSE_SIZES:
            backward_case(size_name, saved, out, False)
        backward_case("n%16=0", saved, out, True)

    def region_case(shape_name, dtype, target_kind, sigmoid, mode, mask_kind, grads=None, misaligned=False):
        """pass 1 (region_sums) where grads is None, else pass 2 for grads input, target or both"""
        shape = REGION_SHAPES[shape_name]
        t_dtype = {"float": dtype, "bool": torch.bool, "uint8": torch.uint8}[target_kind]
        label = (f"{shape_name}{' misaligned' if misaligned else ''} {str(dtype)[6:]} "
                 f"{'logits' if sigmoid else 'probs'} target {target_kind} {['linear', 'squared', 'l1'][mode & 3]}"
                 f"{' bce' if mode & region.WITH_BCE else ''} "
                 f"mask {mask_kind}{f' grad {grads}' if grads else ''}")

        def call():
            x, t = _tensor(shape, dtype, misaligned), _tensor(shape, t_dtype, misaligned)
            mask = None if mask_kind == "none" else _tensor(
                (shape[0], 1 if mask_kind == "sample" else shape[1], *shape[2:]), torch.bool)
            if grads is None:
                region.region_sums(x, t, mask, sigmoid, mode)
            else:
                sums = 6 if mode & region.WITH_BCE else 4
                grad_sums = _tensor((*shape[:2], sums), common.acc_torch_dtype(dtype, t_dtype))
                region.region_sums_backward(grad_sums, x, t, mask, sigmoid, mode, grads != "target", grads != "input")

        cases.append((label, "region", call, not misaligned))

    for dtype in dtypes:
        region_case("64x64", dtype, "float", False, 0, "none")
        region_case("64x64", dtype, "bool", True, 1, "sample")
        region_case("64x64", dtype, "uint8", True, 2, "channel")
        region_case("64x64", dtype, "float", False, 0, "none", "both")
        region_case("64x64", dtype, "bool", True, 2, "sample", "input")
        region_case("64x64", dtype, "float", True, 1, "channel", "both")
        region_case("64x64", dtype, "bool", True, 4, "none")  # DiceBCE's BCE sums (mode + 4)
        region_case("64x64", dtype, "bool", True, 4, "sample", "input")
    if not quick:
        region_case("64x64", torch.float32, "float", True, 5, "channel", "both")
        region_case("odd S", torch.float32, "float", True, 6, "sample")
        region_case("rows S=16", torch.float32, "uint8", True, 4, "sample")
        region_case("64x64", torch.float32, "float", False, 2, "none", "target")
        for dtype in (torch.float32, torch.bfloat16):
            region_case("odd S", dtype, "float", True, 2, "sample")
            region_case("odd S", dtype, "float", True, 2, "sample", "both")
            region_case("rows S=16", dtype, "uint8", True, 0, "sample")
            region_case("rows S=16", dtype, "float", False, 1, "channel", "both")
        region_case("rows S=35", torch.float32, "float", True, 1, "channel")
        region_case("rows S=1", torch.float32, "float", False, 0, "none")
        region_case("rows S=1", torch.float32, "float", False, 0, "none", "both")
        region_case("64x64", torch.float32, "float", True, 0, "sample", misaligned=True)
        region_case("64x64", torch.float32, "float", True, 0, "sample", "both", misaligned=True)

    def ce_case(classes, dtype, t_dtype, grad, weight, smoothing, reduction=1):
        """cross_entropy_fwd on (2, classes, 64, 64): C <= 32 one class tile in registers, above
        chunks of classes walked twice"""
        shape = (2, classes, 64, 64)
        label = (f"C={classes} {str(dtype)[6:]} target {str(t_dtype)[6:]} {['none', 'mean', 'sum'][reduction]} "
                 f"grad {'on' if grad else 'off'}{' weight' if weight else ''}{' smoothing' if smoothing else ''}")

        def call():
            x, t = _tensor(shape, dtype), _tensor((shape[0], *shape[2:]), t_dtype)
            w = torch.ones(classes) if weight else None
            cross_entropy.cross_entropy_fwd(x, t, w, -100, 0.1 if smoothing else 0.0, reduction, grad)

        cases.append((label, "ce", call, True))

    for classes in (4, 14, 40):
        for dtype in (torch.float32, torch.bfloat16):
            ce_case(classes, dtype, torch.uint8, True, False, False)
            ce_case(classes, dtype, torch.int64, True, True, True)
    if not quick:
        ce_case(4, torch.float32, torch.int64, False, False, False)
        ce_case(14, torch.float32, torch.int64, True, False, False, reduction=0)
        ce_case(14, torch.bfloat16, torch.int64, True, False, True)
        ce_case(40, torch.bfloat16, torch.uint8, False, True, False, reduction=2)

    def softmax_region_case(classes, dtype, t_dtype, mode, masked, ce, weight, smoothing, backward):
        """softmax_region_sums (backward: its backward) on (2, classes, 64, 64): C <= 32 one class
        tile in registers, above chunks of classes walked twice (three times backward)"""
        shape = (2, classes, 64, 64)
        label = (f"C={classes} {str(dtype)[6:]} target {str(t_dtype)[6:]} {['linear', 'squared', 'l1'][mode]}"
                 f"{' mask' if masked else ''}{' ce' if ce else ''}{' weight' if weight else ''}"
                 f"{' smoothing' if smoothing else ''}{' backward' if backward else ''}")

        def call():
            x, t = _tensor(shape, dtype), _tensor((shape[0], *shape[2:]), t_dtype)
            mask = _tensor((shape[0], 1, *shape[2:]), torch.bool) if masked else None
            w = torch.ones(classes) if weight else None
            if backward:
                acc = common.acc_torch_dtype(dtype)
                softmax_region.softmax_region_sums_backward(_tensor((2, classes, 4), acc), _tensor((3,), acc), x, t,
                                                            mask, mode, w, -100, 0.1 if smoothing else 0.0)
            else:
                softmax_region.softmax_region_sums(x, t, mask, mode, w, -100, 0.1 if smoothing else 0.0, ce)

        cases.append((label, "softmax_region", call, True))

    for classes in (4, 14, 40):
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (False, True):
                softmax_region_case(classes, dtype, torch.uint8, 0, False, False, False, False, backward)
                softmax_region_case(classes, dtype, torch.int64, 1, True, True, True, True, backward)
    if not quick:
        softmax_region_case(4, torch.float64, torch.int64, 2, True, True, False, False, False)
        softmax_region_case(4, torch.float64, torch.int64, 2, True, False, False, False, True)
        softmax_region_case(14, torch.float16, torch.int32, 2, False, True, False, True, False)

    def softmax_tv_case(shape_name, classes, dtype, grad, reduction=1):
        """softmax_tv_fwd on (2, classes, spatial...): 2-D, 3-D, a 2-D plane of odd rows"""
        spatial = {"64x64": (64, 64), "3-D": (8, 32, 32), "odd W": (33, 45)}[shape_name]
        label = (f"{shape_name} C={classes} {str(dtype)[6:]} {['none', 'mean', 'sum'][reduction]} "
                 f"grad {'on' if grad else 'off'}")

        def call():
            softmax_tv.softmax_tv_fwd(_tensor((2, classes, *spatial), dtype), 0.1, len(spatial), reduction, grad)

        cases.append((label, "softmax_tv", call, True))

    for dtype in dtypes:
        softmax_tv_case("64x64", 14, dtype, True)
        softmax_tv_case("3-D", 14, dtype, True)
    softmax_tv_case("64x64", 4, torch.float32, False, reduction=2)
    if not quick:
        softmax_tv_case("3-D", 40, torch.bfloat16, False)
        softmax_tv_case("odd W", 3, torch.float32, True)
    return cases


_TRITON_FAMILY = {"mse_fwd_kernel": "mse", "seg_fwd_kernel": "seg", "loss_backward_kernel": "loss_backward",
                  "sum_groups_kernel": "sum", "region_sums_kernel": "region", "region_grad_kernel": "region_backward",
                  "cross_entropy_fwd_kernel": "ce", "softmax_region_sums_kernel": "softmax_region",
                  "softmax_region_grad_kernel": "softmax_region_backward", "softmax_tv_fwd_kernel": "softmax_tv"}


def _element_bytes(type_name):
    """Bytes of one element behind a Triton pointer type ('*fp32' -> 4, '*u8' -> 1)."""
    bits = re.search(r"(\d+)$", type_name)
    return int(bits.group(1)) // 8 if bits else 1


def triton_variants(quick=False):
    """Compiles every launcher variant for sm_90 and returns one Variant per distinct compiled kernel."""
    import torch  # noqa: F401

    variants, seen = [], {}
    with standin_driver() as standin, tempfile.TemporaryDirectory() as tmp:
        for label, family, call, aligned in triton_cases(quick):
            first = len(standin.launches)
            try:
                call()
            except Exception as error:  # a compile error is the first thing the gate reports
                variants.append(Variant("triton", family, "?", label, error=f"{type(error).__name__}: {error}"[:300]))
                continue
            for launch in standin.launches[first:]:
                src, metadata = launch["src"], launch["metadata"]
                name = src.fn.__name__
                kernel_family = _TRITON_FAMILY.get(name, family)
                key = (name, metadata.hash)
                if key in seen:  # the same compiled kernel (another launch of it): one row
                    seen[key].variant += f"; {label}" if kernel_family != "sum" and label not in seen[key].variant else ""
                    continue
                v = Variant("triton", kernel_family, name, label if kernel_family != "sum" else "partials")
                v.threads = metadata.num_warps * 32
                v.shared_bytes = metadata.shared
                path = os.path.join(tmp, f"{name}-{metadata.hash}.cubin")
                with open(path, "wb") as f:
                    f.write(launch["cubin"])
                functions, resources = read_cubin_like(path)
                fn_name = next(iter(functions))
                fill_from_sass(v, functions[fn_name], resources[fn_name])
                if kernel_family == "softmax_tv":  # the hot loop: all its class sweeps (elements a pass: below)
                    count_class_sweeps(v, functions[fn_name])
                signature = src.signature
                constants = {k[0] if isinstance(k, tuple) else k: val for k, val in getattr(src, "constants", {}).items()}
                names = list(signature)
                blocks = [val for k, val in constants.items() if isinstance(k, int) and names[k].startswith("BLOCK")]
                blocks += [val for k, val in constants.items() if isinstance(k, str) and k.startswith("BLOCK")]
                tile = 1
                for b in blocks:
                    tile *= int(b)
                v.elements_per_pass = tile / v.threads if kernel_family != "sum" else 0.0
                pointers = {k: t for k, t in signature.items() if isinstance(t, str) and t.startswith("*")}
                floats = [k for k, t in signature.items() if t in ("fp32", "fp64")]
                data_f64 = any(t == "*fp64" for t in pointers.values())
                v.f64_params = not (data_f64 and any(signature[k] == "fp32" for k in floats))
                v.bytes_per_element, v.writes_stream = _triton_streams(signature, launch["args"])
                v.vector_path = aligned and kernel_family != "sum"
                seen[key] = v
                variants.append(v)
    return variants


def _triton_streams(signature, args):
    """(compulsory bytes an element, whether it writes a stream) of a launch: a stream is a tensor
    argument with as many elements as the largest (partial sums and the placeholders a launcher
    passes for an output it does not want are smaller); by the kernels' naming, the pointer
    parameters grad*, loss* and out* are written."""
    import torch

    tensors = {name: a for name, a in zip(signature, args) if isinstance(a, torch.Tensor)}
    if not tensors:
        return 0.0, False
    n = max(t.numel() for t in tensors.values())
    streams = [name for name, t in tensors.items() if t.numel() == n]
    written = any(name.startswith(("grad", "loss", "out")) for name in streams)
    return float(sum(_element_bytes(signature[name]) for name in streams)), written


# ---------------------------------------------------------------------------------------------
# CUDA: the built extension


def built_extension():
    """The path of the pylosses._C that this Python imports (several builds may lie side by side)."""
    try:
        import pylosses._C as ext
    except ImportError:
        return None
    return ext.__file__


def compile_cuda_source(source, out_dir):
    """nvcc -c of one csrc/cuda/*.cu for sm_90 with setup.py's flags (and torch's, as its
    BuildExtension adds them): the object that --cuda-object judges, without a full CUDA build."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    obj = os.path.join(out_dir, os.path.splitext(os.path.basename(source))[0] + ".o")
    command = ["nvcc", "-c", source, "-o", obj, "-O3", "-lineinfo", "-std=c++20", "-Xcompiler", "-fPIC",
               "-gencode", "arch=compute_90,code=sm_90", "-DTORCH_EXTENSION_NAME=_C", *COMMON_NVCC_FLAGS,
               *(f"-I{p}" for p in include_paths("cuda")), f"-I{os.path.join(ROOT, 'csrc')}"]
    subprocess.run(command, check=True)
    return obj


def demangle(names):
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, done.splitlines()))


_CUDA_FAMILY = (("softmax_region_sum_rows", "sum"), ("softmax_region_sums_kernel", "softmax_region"),
                ("softmax_region_grad", "softmax_region_backward"), ("softmax_tv", "softmax_tv"),
                ("seg_fwd", "seg"), ("mse", "mse"), ("loss_backward", "loss_backward"), ("sum_and_finish", "sum"),
                ("region_sums_backward", "region_backward"), ("region_sums", "region"), ("cross_entropy", "ce"))
_TYPE_BYTES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "bool": 1, "unsigned char": 1}


def template_args(demangled):
    """The top-level template arguments of a kernel's demangled name:
    'void ns::k<true, 4, float, ns::A<float, bool> >(ns::A<float, bool>)' -> ['true', '4', 'float', 'ns::A<float, bool>']"""
    open_at = demangled.find("<")
    if open_at < 0:
        return []
    args, depth, cur = [], 0, ""
    for c in demangled[open_at + 1:]:
        if c == ">" and depth == 0:
            break
        if c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        depth += c == "<"
        depth -= c == ">"
        cur += c
    return args + [cur.strip()] if cur.strip() else args


_TYPES = re.compile(r"\b(c10::BFloat16|c10::Half|unsigned char|float|double|bool)\b")


def _saved_grad_bytes(type_name):
    """Bytes an element of a saved gradient of that type: float16's is kept in float32."""
    return 4 if type_name == "c10::Half" else _TYPE_BYTES[type_name]


def cuda_output_bytes(family, targs):
    """Bytes an element of each output a CUDA kernel's hot loop may store: seg, the input's
    gradient and a float target's; mse, the gradient and the loss ("none"); loss_backward, the
    gradient; region_backward, the input's and a float target's gradients, in their own dtypes;
    region (the sums), nothing. The first is the stream the budget counts as written (cuda_streams)."""
    names = _TYPES.findall(", ".join(targs))
    size = [_TYPE_BYTES[t] for t in names]
    if family == "seg":
        hard = targs[3] in ("bool", "unsigned char")
        return tuple(_saved_grad_bytes(names[i]) for i in ((0,) if hard else (0, 1)))
    if family == "region_backward":
        return tuple(size[:1] if names[1] in ("bool", "unsigned char") else size[:2])
    if family == "region":
        return ()
    if family == "mse":
        return (size[3], size[2])
    if family == "loss_backward":
        return (size[1],)
    if family == "ce":  # <pixels, class bound, input, target>: see cuda_streams
        grad, classes = _saved_grad_bytes(names[0]), int(targs[1])
        return (grad, size[0] / classes) if classes else (grad,)
    if family == "softmax_region":  # <class bound, mode, input>: the sums only
        return ()
    if family == "softmax_region_backward":  # the input's gradient, in its dtype
        return (size[0],)
    if family == "softmax_tv":  # <spatial dims, input>: the input's gradient, float16's in float32
        return (_saved_grad_bytes(names[0]),)
    return (0,)


def cuda_streams(family, targs):
    """(bytes an element of each stream it reads, bytes an element it writes) of a CUDA kernel instantiation,
    from its operand types: seg<logits, vec, input, target> reads input and target and writes
    input's gradient (float16's in float32); mse<vec, MseArgs<input, target, loss, grad>> reads
    two and writes the gradient (reduction mean); loss_backward<vec, BackwardArgs<saved, out>>
    reads one and writes one; region_sums<vec, mode, sigmoid, bce, input, target> reads input and
    target, and region_sums_backward writes the input's gradient too. Each region kernel holds
    its loop twice, with and without a mask: the gate judges the larger, the masked one, against
    the budget of the smaller, the unmasked one's bytes (so that both are within it)."""
    size = [_TYPE_BYTES[t] for t in _TYPES.findall(", ".join(targs))]
    written = next(iter(cuda_output_bytes(family, targs)), 0)
    if family in ("seg", "mse", "region", "region_backward"):
        return (size[0], size[1]), written
    if family == "loss_backward":
        return (size[0],), written
    if family == "ce":
        # cross_entropy_fwd_kernel<pixels, class bound kC, input, target>: bytes an element of the
        # input (B, C, spatial...), whose C elements a pixel share its label (and, "none", its
        # loss: a stream cuda_output_bytes counts at 1 / kC). The label's bytes are counted at
        # C = kC, the bound (the most classes, the fewest label bytes an element: the smallest
        # budget of the variant; fewer classes pay the same per-pixel work over fewer elements,
        # which the gate does not see). The streaming variant (kC = 0, any C above the register
        # path's 8) counts no label bytes (C unbounded), and its hot loop is its second pass
        # alone (its first pass, about 8 to 10 instructions an element in float32 and 16-bit
        # inputs, is another inner loop): see csrc/cuda/cross_entropy.cu's header.
        classes = int(targs[1])
        label = {"long": 8, "int": 4, "unsigned char": 1}[targs[3]] / classes if classes else 0.0
        return (size[0], label), written
    if family in ("softmax_region", "softmax_region_backward"):
        # <class bound kC, mode, input>: the input, and a label of a byte (uint8 labels, the
        # smallest budget; the label's dtype is read at run time) shared by the kC classes of the
        # bound; the chunked path (kC = 0, any C above 32) counts no label bytes
        classes = int(targs[0])
        return (size[0], 1 / classes if classes else 0.0), written
    if family == "softmax_tv":  # <spatial dims, input>: reads the input, writes its gradient
        return (size[0],), written
    return (), 0


def softmax_elements_per_pass(targs, hot):
    """Elements (pixel x class) of one pass of the hot loop of a softmax_region kernel: a lane takes
    a pixel, so the register path's pass (the tile loop) covers the kC classes of the bound; the
    chunked path's hot loop is a loop over classes, a class a pass unless nvcc unrolled it: counted
    by the gradient's stores (backward) or the input's loads (forward, whose loops over the classes
    load nothing else), of the input's width."""
    classes = int(targs[0])
    if classes:
        return float(classes)
    size = _TYPE_BYTES[_TYPES.findall(targs[2])[0]] * 8
    access = "STG" if any(opcode(t).startswith("STG") for t in hot) else "LDG"
    return float(max(1, sum(opcode(t).startswith(access) and access_bits(opcode(t)) == size for t in hot)))


def count_class_sweeps(v, instructions):
    """softmax_tv's cost an element: its class sweeps (max, sum of exponentials, the loss, the
    gradient), loops of one class a pass (#pragma unroll 1), each reading the logits of a pixel
    and its neighbours, are the innermost loops that load; an element (a pixel's class) passes
    once through each, so the hot loop is all of them together, one element a pass."""
    hot = [t for s, e in innermost_loading_loops(instructions) for a, t in instructions if s <= a <= e]
    v.hot_instructions = len(hot)
    v.hot_calls = sum(opcode(t).startswith("CALL") for t in hot)
    v.elements_per_pass = 1.0


def cuda_elements_per_pass(family, targs, vec, hot):
    """Elements a thread handles in one pass of the hot loop: a pack of vec, times the packs
    that its stores hold (several where nvcc unrolled the loop); for a kernel that stores
    nothing an element (region), the packs that its loads hold."""
    written = sum(cuda_output_bytes(family, targs))
    access = "STG" if written else "LDG"
    bits = sum(access_bits(opcode(t)) for t in hot if opcode(t).startswith(access))
    # region: the hot loop is the masked one (cuda_streams), which loads the mask's byte too
    pack_bits = vec * 8 * (written or sum(cuda_streams(family, targs)[0]) + _TYPE_BYTES["bool"])
    return float(vec * max(1, round(bits / pack_bits)))


def cuda_variants(so_path):
    functions, resources = read_cubin_like(so_path)
    names = demangle(list(functions))
    variants = []
    for mangled, instructions in functions.items():
        pretty = names[mangled]
        kernel = re.sub(r"^void ", "", pretty.split("<")[0]).split("::")[-1]
        family = next((f for key, f in _CUDA_FAMILY if key in kernel), None)
        if family is None:
            continue
        targs = template_args(pretty)
        short = [re.sub(r"pylosses::(cuda::\(anonymous namespace\)|math)::", "", a) for a in targs]
        v = Variant("cuda", family, kernel, "<" + ", ".join(short) + ">")
        v.threads = 256  # kThreads, every kernel (csrc/cuda/cuda_common.cuh)
        softmax = family.startswith("softmax_region")
        # softmax_tv<spatial dims, input>: no packs (a column a thread, elements_per_pass below)
        vec = 1 if softmax or family == "softmax_tv" else next((int(a) for a in targs if a.isdigit()), 1)
        if family == "seg":  # the launch's dynamic shared memory: two buffers of a tile's probabilities
            v.shared_bytes = 2 * v.threads * vec * (8 if "double" in targs[2:] else 4)
        fill_from_sass(v, instructions, resources.get(mangled, (0, 0, 0, 0)))
        if family != "sum":
            # a pass of the hot loop handles one pack a thread, or several where nvcc unrolled the
            # loop: counted by the bits it stores, a pack storing every output it writes (a
            # float16 input's gradient is float32: a pack of 8 is two 128-bit stores, one pass)
            read, written = cuda_streams(family, targs)
            if family == "softmax_tv":
                count_class_sweeps(v, instructions)
                # a thread's pass of a class sweep serves the 8 slots of its ring (kWalk; 4 in
                # float64), of
                # which the output share is 30 of 32 lanes (two are a halo), in 3-D also 6 of 8
                # warps (kWalk, kCols, kRows in csrc/cuda/softmax_tv.cu): output elements a pass
                walk = 4 if targs[1] == "double" else 8
                v.elements_per_pass = walk * 30 / 32 * (6 / 8 if targs[0] == "3" else 1)
            else:
                v.elements_per_pass = softmax_elements_per_pass(targs, hot_loop(instructions)) if softmax else \
                    cuda_elements_per_pass(family, targs, vec, hot_loop(instructions))
            v.vector_path = vec > 1
            v.writes_stream = vec > 1 and written > 0  # every one of them that writes may write the gradient
            v.bytes_per_element = float(sum(read) + written)
            v.load_bits_needed = min(128, vec * max(read) * 8)
            v.store_bits_needed = min(128, vec * written * 8)
        variants.append(v)
    return variants


# ---------------------------------------------------------------------------------------------
# the table


def row(v):
    ipe = v.instructions_per_element
    frac = v.predicted_copy_fraction
    return {"backend": v.backend, "family": v.family, "kernel": v.kernel, "variant": v.variant,
            "threads": v.threads, "registers": v.registers, "spill_bytes": v.stack_bytes, "shared_bytes": v.shared_bytes,
            "resident_warps": v.resident_warps, "load_bits": v.load_bits, "store_bits": v.store_bits,
            "instructions_per_element": round(ipe, 1) if ipe is not None else None, "hot_loop_calls": v.hot_calls,
            "budget": round(v.budget, 1) if v.budget else None,
            "predicted_copy_fraction": round(frac, 2) if frac is not None else None,
            "error": v.error, "failures": v.failures, "allowed": v.allowed}


def summary(variants):
    """One line a (backend, kernel): over its variants, the ranges the README shows."""
    groups = {}
    for v in variants:
        groups.setdefault((v.backend, v.kernel), []).append(v)
    lines = ["| backend | kernel | variants | registers | spilling | warps/SM | instr/elem | budget "
             "| predicted copy fraction | failing |", "|---|---|---|---|---|---|---|---|---|---|"]

    def span(values, fmt="{:.0f}"):
        values = [x for x in values if x is not None]
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"

    for (backend, kernel), vs in groups.items():
        lines.append(f"| {backend} | {kernel} | {len(vs)} | {span([v.registers for v in vs])} | "
                     f"{sum(bool(v.local_ops) for v in vs)} | {span([v.resident_warps for v in vs])} | "
                     f"{span([v.instructions_per_element for v in vs], '{:.1f}')} | {span([v.budget for v in vs], '{:.1f}')} | "
                     f"{span([v.predicted_copy_fraction for v in vs], '{:.2f}')} | {sum(bool(v.failures) for v in vs)} |")
    return "\n".join(lines)


def markdown(variants, versions, command="python tools/sm90_gate.py"):
    lines = ["# sm_90 compiled-code gate (a prediction from static code, not a measurement)", "",
             f"Compiled without a GPU: {versions}. Command: `{command}`.", "",
             "Instructions an element: the SASS of the hot loop (the innermost loop that loads from global memory, "
             "every instruction in it) over the elements a thread handles in one pass of it. Budget: "
             f"{INSTRUCTIONS_PER_BYTE:.1f} instructions a byte of compulsory traffic (H200: 33.5 T instructions/s, "
             "4.3 TB/s). Predicted fraction of copy bandwidth: min(1, budget / instructions).", "",
             summary(variants), "",
             "| backend | kernel | variant | regs | spill B | smem B | warps/SM | LDG/STG bits | instr/elem | budget "
             "| predicted copy fraction | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        r = row(v)
        verdict = "FAIL: " + "; ".join(v.failures) if v.failures else ("allowed: " + "; ".join(
            a.split(" (allowed")[0] for a in v.allowed) if v.allowed else "ok")
        if v.error:
            verdict = "FAIL: " + v.error
        variant = v.variant if len(v.variant) < 90 else v.variant[:87] + "..."
        lines.append(f"| {v.backend} | {v.kernel} | {variant} | {r['registers']} | {r['spill_bytes']} | "
                     f"{r['shared_bytes']} | {r['resident_warps']} | {r['load_bits']}/{r['store_bits']} | "
                     f"{r['instructions_per_element'] if r['instructions_per_element'] is not None else '-'} | "
                     f"{r['budget'] if r['budget'] else '-'} | "
                     f"{r['predicted_copy_fraction'] if r['predicted_copy_fraction'] is not None else '-'} | {verdict} |")
    if ALLOWED:
        lines += ["", "Allowed exceptions:", ""] + [f"- {fam} / {rule}{f' / {text}' if text else ''}: {why}"
                                                   for fam, rule, text, why in ALLOWED]
    return "\n".join(lines) + "\n"


def versions():
    import torch

    parts = [f"torch {torch.__version__}"]
    try:
        import triton

        parts.append(f"Triton {triton.__version__}")
    except ImportError:
        pass
    parts.append(f"Python {sys.version.split()[0]}")
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+)", nvcc)
        if m:
            parts.append(f"nvcc {m.group(1)}")
    except OSError:
        pass
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/sm90_gate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "sm90-static"))
    parser.add_argument("--only", choices=["triton", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer Triton variants")
    parser.add_argument("--cuda-object", metavar="PATH",
                        help="judge the CUDA kernels of this sm_90 object (nvcc -c of one csrc/cuda/*.cu) in place "
                             "of the built extension's: a check of one source without a full CUDA build")
    parser.add_argument("--cuda-source", metavar="PATH",
                        help="compile this csrc/cuda/*.cu for sm_90 (nvcc, setup.py's flags; the object in "
                             "build/sm90_gate/) and judge its kernels, as --cuda-object does")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: the gate compiles, the interpreter would not")
    sys.path.insert(0, ROOT)
    import pylosses._ops as ops

    if args.cuda_source:
        folder = os.path.join(ROOT, "build", "sm90_gate")
        os.makedirs(folder, exist_ok=True)
        args.cuda_object = compile_cuda_source(args.cuda_source, folder)
    variants = []
    if args.only in (None, "triton"):
        if ops.TRITON_ERROR is not None:
            print(f"no Triton kernels to compile: {ops.TRITON_ERROR}")
            return 1
        variants += triton_variants(args.quick)
    if args.cuda_object:
        variants += cuda_variants(args.cuda_object)
    elif args.only in (None, "cuda"):
        so = built_extension()
        if so is None:
            print("no built extension (pylosses/_C*.so): build it with FORCE_CUDA=1 first")
            return 1
        import torch

        has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("pylosses::seg_loss_fwd", "CUDA")
        cuda = cuda_variants(so) if has_cuda else []  # (cuobjdump fails on a library with no device code)
        if not cuda:
            print(f"{os.path.basename(so)} holds no CUDA kernels: build it with FORCE_CUDA=1")
            return 1
        variants += cuda
    for v in variants:
        judge(v)
    os.makedirs(args.out, exist_ok=True)
    shown = [os.path.relpath(a, ROOT) if os.path.isabs(a) and a.startswith(ROOT) else a
             for a in (sys.argv[1:] if argv is None else argv)]
    text = markdown(variants, versions(), " ".join(["python tools/sm90_gate.py", *shown]))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"versions": versions(), "rows": [row(v) for v in variants]}, f, indent=1)
    print(text)
    failed = [v for v in variants if v.failures]
    print(f"sm_90 gate: {len(variants)} kernels, {len(failed)} failing; table in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
