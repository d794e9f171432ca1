"""python -m pylosses: what this install is and can do (see pylosses.collect_env); --json for
the same as JSON, for a bug report."""

import argparse
import json

from ._env import collect_env, format_env


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pylosses", description=__doc__.split(";")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    env = collect_env()
    print(json.dumps(env, indent=2) if args.json else format_env(env))


if __name__ == "__main__":
    main()
