"""The losses in a real training loop (examples/train_segmentation.py): the native kernels
train exactly as the reference does, the loop's guards work, and torch.compile traces a whole
training step with no graph break and, with dynamic=True, no recompilation across batch sizes."""

import math
import os
import sys

import pytest
import torch

import pylosses

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import train_segmentation as example  # noqa: E402

# Stated tolerance: over 48 optimizer steps, the native loss trajectory stays within 1e-3
# (relative) of the reference's (they differ only by float32 rounding in the loss), and both
# reach a validation IoU of 0.8 on the synthetic shapes.
TRAJECTORY_RTOL = 1e-3
MIN_IOU = 0.8


def _run(backend, **kwargs):
    settings = dict(epochs=3, n_train=256, n_val=64, verbose=False)
    settings.update(kwargs)
    return example.train(backend=backend, **settings)


def test_native_trains_as_the_reference_does():
    native, ref = _run("native"), _run("reference")
    steps = [(a["loss"], b["loss"]) for a, b in zip(native, ref) if "loss" in a]
    assert len(steps) == 48
    worst = max(abs(a - b) / abs(b) for a, b in steps)
    assert worst <= TRAJECTORY_RTOL, f"trajectories differ by {worst:.2g}"
    for history in (native, ref):
        epochs = [r for r in history if "val_iou" in r]
        assert epochs[-1]["train_loss"] < 0.75 * epochs[0]["train_loss"]
        assert epochs[-1]["val_iou"] >= MIN_IOU, epochs


def test_non_finite_loss_stops_training_with_a_clear_message():
    with pytest.raises(example.NonFiniteError, match="lower the learning rate"):
        _run("native", epochs=1, n_train=48, n_val=8, lr=math.inf)


def test_metrics_are_logged(tmp_path):
    _run("native", epochs=1, n_train=32, n_val=8, log_dir=str(tmp_path))
    files = [f.name for f in tmp_path.iterdir()]
    if "metrics.csv" in files:  # no tensorboard installed
        rows = (tmp_path / "metrics.csv").read_text().splitlines()
        assert rows[0] == "tag,step,value" and any(r.startswith("val/iou,1,") for r in rows)
        assert sum(r.startswith("train/grad_norm,") for r in rows) == 2
    else:
        assert any(f.startswith("events.out.tfevents") for f in files), files


def _step_fn(model, criterion):
    def step(x, y):
        logits = model(x)
        return criterion(logits, y) + 0.1 * pylosses.mse_loss(logits, y.float(), backend=criterion.backend)
    return step


def test_compiled_training_step_has_no_graph_break():
    torch.manual_seed(0)
    model = example.TinyUNet(width=4)
    criterion = pylosses.SegmentationLoss(from_logits=True, backend="native")
    x, y = example.make_dataset(4, size=16)
    step = _step_fn(model, criterion)
    eager = step(x, y)
    eager.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(step, fullgraph=True)(x, y)  # fullgraph: a graph break would raise
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_dynamic_compile_does_not_recompile_across_batch_sizes():
    from torch._inductor.compile_fx import compile_fx

    graphs = []

    def counting_inductor(gm, example_inputs):  # dynamo calls its backend once a graph it compiles
        graphs.append(gm)
        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 1))
    criterion = pylosses.SegmentationLoss(from_logits=True, backend="native")
    step = torch.compile(_step_fn(model, criterion), backend=counting_inductor, dynamic=True, fullgraph=True)
    images, masks = example.make_dataset(32, size=12)
    after_first = None
    for batch in (2, 3, 5, 7, 11, 13):
        loss = step(images[:batch], masks[:batch])
        loss.backward()
        torch.testing.assert_close(loss, _step_fn(model, criterion)(images[:batch], masks[:batch]))
        after_first = after_first or len(graphs)
    # (the first call may hand the backend two graphs: dynamo restarts its analysis once when
    # it specialises the loss's float weights, alpha and beta)
    assert after_first and len(graphs) == after_first, f"{len(graphs) - after_first} recompilations for 5 new batch sizes"
