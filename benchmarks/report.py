"""How the benchmark CLI shows its results: a progress line, Markdown tables and PNG plots."""

import os
import re
import sys
import time
from itertools import groupby


class Progress:
    """One line on stderr, rewritten as the cells go by, with the time spent and left."""

    def __init__(self, total):
        self.total, self.count, self.start = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def show(self, what):
        spent = time.perf_counter() - self.start
        left = f", ~{spent / self.count * (self.total - self.count):.0f} s left" if self.count else ""
        line = f"[{self.count + 1}/{self.total}] {what} ({spent:.0f} s{left})"
        print(("\r" + line.ljust(100)) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        self.count += 1

    def done(self):
        if self.tty:
            print(file=sys.stderr)
        print(f"measured {self.total} cells in {time.perf_counter() - self.start:.0f} s", file=sys.stderr)


def slug(name):
    """A file-name slug: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _machine_line(info):
    where = (f"{info['gpu']} ({info['sm_count']} SMs, {info['gpu_memory_gb']} GB), CUDA {info['cuda']}"
             if info["device"] == "cuda" else
             f"{info['cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads, {info['cpu_capability']})")
    return (f"Machine: {where}; torch {info['torch']}, Triton {info['triton']}, Python {info['python']}; "
            f"{info['date']}. Median of {info['repeats']} calls ({info['timing']}; {info['timer']}).")


def _fmt(value, spec, none="-"):
    return none if value is None else format(value, spec)


def _times(ratio):
    """"1.23x", or "-" where there is no ratio (no torch.compile in the run)."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def _key(r):
    return (r["loss"], r["mode"], r["dtype"])


def summary_rows(rows):
    """For each (loss, mode, dtype), the fused providers at the largest size."""
    out = []
    for key, group in groupby(sorted(rows, key=_key), key=_key):
        group = list(group)
        largest = max(r["numel"] for r in group)
        out += [r for r in group if r["numel"] == largest and r["provider"] in ("native", "triton")]
    return out


def _provider(row):
    """The provider's name, and where its loss or gradient is not the reference's, how far off."""
    if row.get("agrees_with_reference", True):
        return row["provider"]
    return f"{row['provider']} (WRONG: {row['reference_error']:.1e} from the reference)"


def markdown(rows, info):
    lines = [_machine_line(info), "",
             "Compulsory bytes: input and target read, and for forward+backward the gradient written. "
             "'of copy' is the bandwidth reached on them as a fraction of a copy of as many bytes timed "
             "in the same run; 'first call' includes compilation and is not in the median. Before it is "
             "timed, each provider's loss (and gradient) is checked against the reference's; a row marked "
             "WRONG failed that check.", ""]
    summary = summary_rows(rows)
    if summary:
        lines += ["Summary, largest size:", "",
                  "| loss | mode | dtype | size | provider | median ms | vs eager | vs compile | of copy |",
                  "|---|---|---|---|---|---:|---:|---:|---:|"]
        for r in summary:
            lines.append(f"| {r['loss']} | {r['mode']} | {r['dtype']} | {r['size']} | {_provider(r)} | "
                         f"{r['median_ms']:.3f} | {r['speedup_vs_eager']:.2f}x | "
                         f"{_times(r['speedup_vs_compile'])} | {100 * r['bandwidth_fraction']:.0f}% |")
        lines.append("")
    for (loss, mode, dtype), group in groupby(sorted(rows, key=_key), key=_key):
        lines += [f"### {loss}, {mode}, {dtype}", "",
                  "| size | provider | median ms | vs eager | vs compile | GB/s | of copy | peak extra MB | first call s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sorted(group, key=lambda r: r["numel"]):
            lines.append(f"| {r['size']} | {_provider(r)} | {r['median_ms']:.3f} | {r['speedup_vs_eager']:.2f}x | "
                         f"{_times(r['speedup_vs_compile'])} | "
                         f"{r['bandwidth_gbs']:.1f} | {100 * r['bandwidth_fraction']:.0f}% | "
                         f"{_fmt(r['peak_extra_mb'], '.1f', 'not measured')} | {r['first_call_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


PLOTS = ("time.png", "bandwidth.png")


def plots(rows, info, folder, names=PLOTS):
    """time.png (median time against size) and bandwidth.png (fraction of the copy bandwidth
    against size), or those of them in names: one panel for each (loss, mode, dtype), one line
    for each provider."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    keys = sorted({_key(r) for r in rows})
    written = []
    for name, field, label, log in (("time.png", "median_ms", "median time (ms)", True),
                                    ("bandwidth.png", "bandwidth_fraction", "fraction of copy bandwidth", False)):
        if name not in names:
            continue
        cols = min(len(keys), 4)
        nrows = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            cell = [r for r in rows if _key(r) == key]
            for provider in dict.fromkeys(r["provider"] for r in cell):
                points = sorted((r["numel"], r[field]) for r in cell if r["provider"] == provider)
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=provider)
            ax.set_xscale("log", base=2)
            if log:
                ax.set_yscale("log")
            ax.set_title(" ".join(key), fontsize=9)
            ax.set_xlabel("elements")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        where = info["gpu"] if info["device"] == "cuda" else f"{info['cpu']} ({info['cpu_count']} cores)"
        fig.suptitle(f"pylosses on {where}, {info['date']}", fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, name), dpi=110)
        plt.close(fig)
        written.append(name)
    return written
