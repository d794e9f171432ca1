"""The benchmark CLI's options and helpers (what it measures is the benchmarks' business, not
the tests': these check that bad options are clear errors and the sizes mean what they say)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from benchmarks import __main__ as cli, report  # noqa: E402
from benchmarks.common import (CLASSES, LOSSES, compulsory_bytes, format_size, loss_shape, make_inputs,  # noqa: E402
                               parse_size, shape_for)


@pytest.mark.parametrize("text, n", [("64K", 1 << 16), ("16m", 1 << 24), ("1G", 1 << 30), ("1000", 1000)])
def test_sizes_round_trip(text, n):
    assert parse_size(text) == n
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize("n", [1, 1000, 1 << 16, 1 << 20, 1 << 24, 1 << 28])
def test_shape_for_holds_the_size(n):
    shape = shape_for(n)
    assert len(shape) == 4 and shape[1] == 1 and shape[2] == shape[3]
    assert torch.Size(shape).numel() <= max(n, 1) * 2 and (n < 4 or torch.Size(shape).numel() * 2 > n)


@pytest.mark.parametrize("n", [1 << 12, 1 << 20, 1 << 24])
@pytest.mark.parametrize("classes", [3, 4])
def test_shape_for_holds_the_size_in_classes(n, classes):
    shape = shape_for(n, classes)
    assert shape[1] == classes and shape[2] == shape[3]
    assert n / 2 < torch.Size(shape).numel() <= n


@pytest.mark.parametrize("loss", sorted(CLASSES))
def test_multiclass_sweep_inputs_are_logits_and_a_label_map(loss):
    """The main sweep's cross-entropy and DiceCE cells: logits (B, C, S, S), int64 labels of
    every class in 0..C-1, (B, S, S) for cross-entropy and (B, 1, S, S) for DiceCE."""
    shape = loss_shape(loss, "64K")
    assert shape[1] == CLASSES[loss] and torch.Size(shape).numel() == 1 << 16
    x, t = make_inputs(loss, shape)
    assert x.shape == shape and x.dtype == torch.float32 and t.dtype == torch.int64
    assert t.shape == ((shape[0], *shape[2:]) if loss == "cross_entropy" else (shape[0], 1, *shape[2:]))
    assert set(t.unique().tolist()) == set(range(shape[1]))
    assert compulsory_bytes("forward", x, t, loss) == x.numel() * 4 + t.numel() * 8


def test_compulsory_bytes_count_the_gradient_only_with_backward():
    x, t = torch.zeros(10), torch.zeros(10, dtype=torch.bool)
    assert compulsory_bytes("forward", x, t) == 40 + 10
    assert compulsory_bytes("forward+backward", x, t) == 40 + 10 + 40
    # a region loss reads input and target again for its gradient, after the sums
    assert compulsory_bytes("forward+backward", x, t, "dice_loss") == 2 * (40 + 10) + 40


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "12Q"], "64K, 16M"),
    (["--providers", "nativ"], "unknown provider 'nativ'"),
    (["--dtypes", "float8"], "unknown dtype 'float8'"),
    (["--losses", "l1"], "unknown loss 'l1'"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_bad_options_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--device", "cpu"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--device", "cuda"])
    assert "no CUDA GPU" in capsys.readouterr().err


def test_quick_run_writes_its_report(tmp_path):
    assert cli.main(["--device", "cpu", "--sizes", "4K", "--repeats", "1", "--providers", "reference,native",
                     "--losses", "mse_loss", "--modes", "forward", "--no-plots", "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} == {"results.json", "results.md"}
    text = (folder / "results.md").read_text()
    assert "| 4K | native |" in text and "| 4K | reference |" in text
    assert "| - |" in text and "-x" not in text  # no torch.compile in the run: no ratio to it


def test_quick_run_times_the_multiclass_losses(tmp_path):
    """Cross-entropy and DiceCE are cells of the main sweep (and so of make device-check's
    benchmark): each provider's row, with the logits' shape of 4 classes."""
    assert cli.main(["--device", "cpu", "--sizes", "4K", "--repeats", "1", "--providers", "reference,native",
                     "--losses", "cross_entropy,dice_ce_loss", "--no-plots", "--folder", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert {(r["loss"], r["mode"], r["provider"]) for r in rows} == {
        (loss, mode, provider) for loss in ("cross_entropy", "dice_ce_loss")
        for mode in ("forward", "forward+backward") for provider in ("reference", "native")}
    assert all(r["shape"][1] == 4 and r["numel"] == 4096 for r in rows)


# The CLI, killed (SIGKILL, as make device-check's watchdog does) in the middle of its third cell.
KILLED_IN_THE_THIRD_CELL = """
import os, signal, sys
from benchmarks import __main__ as cli

measure, calls = cli.measure_cell, []


def measure_then_die(*args):
    calls.append(args)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return measure(*args)


cli.measure_cell = measure_then_die
cli.main(sys.argv[1:])
"""


def test_a_run_killed_midway_keeps_every_finished_cell(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_THE_THIRD_CELL, "--device", "cpu", "--sizes", "64K",
                           "--providers", "reference,native", "--repeats", "2", "--folder", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["cells"] == 2 * len(LOSSES)  # every loss, two modes
    cells = {(r["loss"], r["mode"]): set() for r in data["results"]}
    for r in data["results"]:
        cells[r["loss"], r["mode"]].add(r["provider"])
    assert list(cells.values()) == [{"reference", "native"}] * 2
    text = (tmp_path / "results.md").read_text()
    assert "### segmentation_loss, forward, float32" in text and "### segmentation_loss, forward+backward" in text
    assert "mse_loss" not in text


@pytest.mark.parametrize("loss", ["cross_entropy", "dice_ce"])
def test_multiclass_benchmark_runs_and_writes_its_table(loss, tmp_path):
    """python -m benchmarks.multiclass on a tiny shape: a row for each mode, with every provider's
    time, written to DIR/multiclass-<loss>.md."""
    from benchmarks import multiclass

    assert multiclass.main(["--loss", loss, "--shapes", "1,3,8,8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / f"multiclass-{loss}.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 1,3,8,8 |")]
    assert len(rows) == 2 and "forward+backward" in rows[1]
    assert f"| {multiclass.PEER[loss]} ms |" in text
    # the header says how to run it again, without this machine's --out path
    assert f"Command: `python -m benchmarks.multiclass --loss {loss} --shapes 1,3,8,8 --repeats 1`." in text


def test_seg_forms_benchmark_runs_and_writes_its_table(tmp_path):
    """python -m benchmarks.seg_forms on a tiny shape: the eight rows (form x target x mode), each
    with every provider's time and the copy's, written to DIR/seg-forms.md."""
    from benchmarks import seg_forms

    assert seg_forms.main(["--shape", "1,1,8,8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "seg-forms.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| probabilities", "| logits"))]
    assert len(rows) == 8 and all(len(r) == 12 for r in rows)
    assert "| copy ms |" in text and "| ceiling vs compile |" in text
    assert "Command: `python -m benchmarks.seg_forms --shape 1,1,8,8 --repeats 1`." in text


def test_region_benchmark_runs_and_writes_its_table(tmp_path):
    """python -m benchmarks.region on a tiny shape: a row for each loss and mode, every provider
    timed (MONAI's class, or for dice_bce its DiceLoss plus torch's BCEWithLogitsLoss), written to
    DIR/region.md."""
    from benchmarks import region

    assert region.main(["--shapes", "1,2,8,8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "region.md").read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "| 1,2,8,8 |" in line]
    assert [(r[0][2:], r[2]) for r in rows] == [(loss, mode) for loss in region.LOSSES
                                                for mode in ("forward", "forward+backward")]
    assert all("n/a" not in "|".join(r) for r in rows)


def test_a_provider_that_computes_another_loss_is_marked_wrong(monkeypatch, tmp_path):
    """Each provider's loss and gradient are checked against the reference before they are
    timed: a kernel that is fast and wrong gets no plain speed-up figure."""
    from benchmarks import common

    right = common.loss_fn

    def loss_fn(loss, provider):
        f = right(loss, provider)
        return (lambda x, t: 1.01 * f(x, t)) if provider == "jit" else f

    monkeypatch.setattr(cli, "loss_fn", loss_fn)
    monkeypatch.setattr(common, "loss_fn", loss_fn)
    args = cli.parse_args(["--losses", "mse_loss", "--providers", "jit", "--sizes", "4K", "--repeats", "2"])
    rows = cli.measure_cell("mse_loss", "forward+backward", "float32", "4K", args)
    by_provider = {r["provider"]: r for r in rows}
    assert by_provider["reference"]["agrees_with_reference"]
    assert not by_provider["jit"]["agrees_with_reference"]
    assert by_provider["jit"]["reference_error"] == pytest.approx(0.01, rel=1e-3)
    assert "jit (WRONG: 1.0e-02 from the reference)" in report.markdown(rows, cli.machine("cpu") | {
        "repeats": 2, "timing": "providers take turns", "timer": "wall clock"})


def test_the_size_column_is_the_size_measured():
    """A size that no shape holds exactly is reported as the elements measured."""
    args = cli.parse_args(["--losses", "mse_loss", "--providers", "reference", "--sizes", "5000", "--repeats", "2"])
    (row,) = cli.measure_cell("mse_loss", "forward", "float32", "5000", args)
    assert row["numel"] == cli.parse_size(row["size"])
