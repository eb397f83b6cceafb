"""A small benchmark harness whose ratios survive a busy machine.

Why: on a shared 2-core machine a case timed after another can meet a different load (a test suite starting, a
compile), so "best of N of A, then best of N of B" can turn a 1.2× into a 0.25×. Here every case lives in its
own long-lived worker process (so its peak RSS, :func:`peak_rss_mb`, is its own), is set up and warmed up (untimed
runs: lazy imports, the fx trace, allocator growth, first-call kernels), and then the driver asks the workers
for one timed run each **in turn** — A B A B ... (round robin for more than two). Every round gives one ratio
B/A measured under nearly the same load; the report is the median ratio with its spread (min–max and the
inter-quartile range), never a single best time.

A workload is a function ``setup(**params) -> run`` in an importable module of this folder, named
``"module:function"``; ``run()`` does one timed unit of work. ``env`` sets environment variables of the worker
before anything is imported (thread settings such as ``OMP_WAIT_POLICY`` must be set before torch loads).

Adding a benchmark: put a file in ``benchmarks/suites/`` with a function ``suite(bench)`` (see
:class:`Bench`); ``benchmarks/run.py`` finds it by its file name (``--suites NAME``).

Protocol between driver and worker: one JSON line per message on the worker's stdin/stdout.
"""

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

__all__ = ["Workload", "Worker", "Bench", "alternate", "spread", "busy_core", "summary_line"]


@dataclass
class Workload:
    """What one worker runs: ``spec`` = "module:function" (a setup returning the timed callable)."""

    name: str
    spec: str
    params: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    #: another checkout's ``benchmarks/`` folder to run the workload from (its engine): before/after comparisons
    root: str = None


class Worker:
    """A subprocess that set up one :class:`Workload`, ran it ``warmup`` times untimed, and times it on request."""

    def __init__(self, workload, warmup=1):
        self.workload = workload
        env = dict(os.environ, **{k: str(v) for k, v in workload.env.items()})
        here = Path(workload.root) if workload.root else HERE
        self.proc = subprocess.Popen(
            [sys.executable, str(here / "harness.py"), "--worker", workload.spec, json.dumps(workload.params),
             str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=here,
        )
        self.ready = self._read()  # setup and warm-up are done when the worker says so

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            raise RuntimeError(f"benchmark worker {self.workload.name} died:\n{err[-4000:]}")
        return json.loads(line)

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def time(self):
        """Seconds of one run (and whatever the run returned as ``info``)."""
        return self.ask("run")

    def peak_rss_mb(self):
        return self.ask("rss")["peak_rss_mb"]

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def spread(values):
    """median, min, max, q1, q3 of ``values`` (q1/q3 by linear interpolation; equal to min/max for n < 4)."""
    v = sorted(values)
    if len(v) >= 4:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1, q3 = v[0], v[-1]
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "q1": q1, "q3": q3, "n": len(v)}


def summary_line(s, unit="", digits=2):
    f = f"{{:.{digits}f}}"
    return (f"{f.format(s['median'])}{unit} (min–max {f.format(s['min'])}–{f.format(s['max'])}, "
            f"IQR {f.format(s['q1'])}–{f.format(s['q3'])}, n={s['n']})")


def alternate(workloads, rounds, warmup=1, log=print):
    """Time ``workloads`` round robin (A B A B ...) for ``rounds`` rounds; every worker stays alive throughout.

    Returns {name: {"seconds": [...], "peak_rss_mb": float, "info": last info}} in the order given; ratios
    between any two are then taken round by round (:meth:`Bench.ratio`).
    """
    workers = []
    try:
        for w in workloads:
            log(f"  setting up {w.name} ...")
            workers.append(Worker(w, warmup))
        result = {w.name: {"seconds": [], "info": None} for w in workloads}
        for r in range(rounds):
            for w, worker in zip(workloads, workers):
                answer = worker.time()
                result[w.name]["seconds"].append(answer["seconds"])
                result[w.name]["info"] = answer.get("info")
            log("  round " + str(r + 1) + ": " + "  ".join(
                f"{w.name} {result[w.name]['seconds'][-1]:.2f}s" for w in workloads))
        for w, worker in zip(workloads, workers):
            result[w.name]["peak_rss_mb"] = worker.peak_rss_mb()
        return result
    finally:
        for worker in workers:
            worker.close()


@contextlib.contextmanager
def busy_core():
    """Another process keeping one core busy (a pure-Python spin loop) for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield proc
    finally:
        proc.kill()
        proc.wait()


class Bench:
    """What a suite gets: options, a scratch folder, and the place to put its results.

    ``bench.args``: the command-line options (``quick``, ``rounds``, ...); ``bench.work``: a temporary folder;
    ``bench.results[suite_name]``: a JSON-able dict the suite fills (written to build/bench.json).
    """

    def __init__(self, args, work):
        self.args = args
        self.work = Path(work)
        self.results = {}

    def alternate(self, workloads, rounds=None, warmup=1):
        return alternate(workloads, rounds or self.args.rounds, warmup)

    @staticmethod
    def ratio(result, numerator, denominator):
        """Round-by-round ratios numerator/denominator of an :func:`alternate` result, with their spread."""
        a, b = result[numerator]["seconds"], result[denominator]["seconds"]
        return spread([x / y for x, y in zip(a, b)])


def peak_rss_mb():
    """This process's peak resident memory (MB) since it started its program.

    Linux: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``: for RUSAGE_SELF the kernel reports the larger of
    the process's own peak and the peak of the image it replaced at ``exec`` (the forked copy of the driver, which
    had just written the benchmark's rasters: a worker of the 65,536-px case "peaked" at 1.9 GB while it never held
    more than 0.85 GB). Elsewhere ``ru_maxrss`` is all there is.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _worker(spec, params, warmup):
    sys.path.insert(0, str(HERE))
    module_name, function = spec.split(":")
    import importlib

    setup = getattr(importlib.import_module(module_name), function)
    run = setup(**json.loads(params))
    for _ in range(int(warmup)):
        run()
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints of the workload must not break the protocol
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "run":
            started = time.perf_counter()
            info = run()
            seconds = time.perf_counter() - started
            out.write(json.dumps({"seconds": seconds, "info": info if isinstance(info, dict) else None}) + "\n")
        elif command == "rss":
            out.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")
        elif command == "quit":
            break
        out.flush()


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    _worker(*sys.argv[2:5])
