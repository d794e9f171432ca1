"""Do the CLI and pytest-benchmark agree? Puts the medians of the same cells side by side:

    python -m pytest benchmarks --benchmark-json=/tmp/pb.json
    python -m benchmarks.compare benchmarks/results/<device>-<date>/results.json /tmp/pb.json

Prints, for every cell both measured, the two medians and their ratio, then the median ratio.
The two time differently (the CLI's providers take turns; pytest-benchmark runs each cell's
rounds back to back, so on the CPU its data stay in cache between rounds), so expect agreement
to within the machine's noise, not to the digit.
"""

import json
import statistics
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        cli = {(r["loss"], r["mode"], r["size"], r["dtype"], r["provider"]): r["median_ms"] for r in json.load(f)["results"]}
    with open(argv[1]) as f:
        benches = json.load(f)["benchmarks"]
    ratios = []
    print(f"{'cell':<58} {'CLI ms':>9} {'pytest-benchmark ms':>20} {'ratio':>7}")
    for b in benches:
        e = b["extra_info"]
        key = (e["loss"], e["mode"], e["size"], e["dtype"], e["provider"])
        if key not in cli:
            continue
        theirs = b["stats"]["median"] * 1e3
        ratio = theirs / cli[key]
        ratios.append(ratio)
        print(f"{' '.join(key):<58} {cli[key]:>9.3f} {theirs:>20.3f} {ratio:>7.2f}")
    if not ratios:
        print("no cell in common")
        return 1
    print(f"{len(ratios)} cells; pytest-benchmark / CLI: median {statistics.median(ratios):.2f}, "
          f"range {min(ratios):.2f} to {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
