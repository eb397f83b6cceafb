"""Speed when another process keeps one core busy, for several thread settings (FPN-ResNet18, T = 1).

Each setting runs in its own worker; the rounds alternate quiet / busy (a spinning process started for the busy
half of each round), so the slowdown busy/quiet is measured round by round under the same background load.
Settings: torch defaults; OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep at barriers instead of spinning);
one intra-op thread; the plugin's own choice (see ``engine.threads``) when it exists.
"""

import importlib.util

from harness import Worker, Workload, busy_core, spread, summary_line
from workloads import make_raster, make_smp_card

SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"OMP_NUM_THREADS": "1"},
}


def suite(bench):
    a = bench.args
    tile, width, height = (128, 256, 256) if a.quick else (512, 768, 512)
    raster = str(make_raster(bench.work / f"threads_{width}x{height}.tif", width, height))
    card = str(make_smp_card(bench.work, "FPN", tile))
    out = {"tile": tile, "width": width, "height": height, "settings": {}}
    print(f"\n[threads] FPN resnet18 T = 1, tile {tile}, raster {width}×{height}: quiet vs one core busy")
    for name, env in SETTINGS.items():
        worker = Worker(Workload(name, "workloads:engine_setup",
                                 dict(card=card, raster=raster, options=dict(stochastic=False, n_samples=1)),
                                 env=dict(env, SEG_UNCERTAINTY_THREADS="torch")))
        quiet, busy = [], []
        try:
            for _ in range(a.rounds):
                quiet.append(worker.time()["seconds"])
                with busy_core():
                    busy.append(worker.time()["seconds"])
        finally:
            worker.close()
        ratio = spread([b / q for b, q in zip(busy, quiet)])
        out["settings"][name] = {"env": env, "quiet": spread(quiet), "busy": spread(busy), "busy_over_quiet": ratio}
        print(f"  {name:<11} quiet {summary_line(spread(quiet), ' s')}\n  {'':<11} busy  "
              f"{summary_line(spread(busy), ' s')}\n  {'':<11} busy/quiet {summary_line(ratio)}")
    bench.results["threads"] = out
