"""Speed and memory of the engine, every figure measured in this run (``make bench``).

Suites live in ``benchmarks/suites/`` (one file each, a ``suite(bench)`` function); the harness
(``benchmarks/harness.py``) runs every case in its own warmed-up worker process and alternates compared cases
round by round (A B A B ...), reporting median ratios with their spread. Results go to build/bench.json.

Usage: python benchmarks/run.py [--quick] [--rounds 5] [--suites modes,width,overhead,threads] [--baseline DIR]
"""

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from harness import Bench  # noqa: E402


def available_suites():
    return sorted(p.stem for p in (HERE / "suites").glob("*.py") if not p.stem.startswith("_"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small rasters and tiles, for a smoke run")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per case (after one warm-up)")
    parser.add_argument("--suites", default=",".join(available_suites()),
                        help=f"comma-separated, from: {', '.join(available_suites())}")
    parser.add_argument("--out", default=str(ROOT / "build" / "bench.json"))
    parser.add_argument("--torch-threads", type=int, default=0, metavar="N",
                        help="overhead suite: torch threads in both cases (default 0: torch's own choice). With 1 "
                             "on a 2-core machine the reader and writer threads get a core of their own, which "
                             "tells the engine's own cost from its contention with the model")
    parser.add_argument("--baseline", help="another checkout (with this benchmarks/ folder copied in) whose engine "
                        "suites that support it time alternately with this one: before/after figures")
    args = parser.parse_args()
    if args.quick:
        args.rounds = min(args.rounds, 3)
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as work:
        bench = Bench(args, work)
        for name in args.suites.split(","):
            module = importlib.import_module(f"suites.{name.strip()}")
            module.suite(bench)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous.update(bench.results)  # a run of some suites keeps the others' last figures
    out.write_text(json.dumps(previous, indent=2, default=str))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
