"""Speed when another process keeps one core busy, for several thread settings (FPN-ResNet18, T = 1).

Each setting runs in its own worker (thread settings are read when torch loads). Every round times every
setting quiet, then every setting with a spinning process busy on one core (A B C, A' B' C'), so settings and
conditions are compared under nearly the same background load; reported: each setting's median with spread,
busy/quiet per setting and setting/default per condition, round by round.
Settings: ``torch``: torch's defaults (OpenMP threads spin at barriers; SEG_UNCERTAINTY_THREADS=torch keeps the
plugin's own choice out); ``passive``: OMP_WAIT_POLICY=PASSIVE (threads sleep at barriers); ``one_thread``:
OMP_NUM_THREADS=1; ``plugin``: what the engine chooses on its own (``engine.threads``).
"""

from harness import Worker, Workload, busy_core, spread, summary_line
from workloads import make_raster, make_smp_card

SETTINGS = {
    "torch": {"SEG_UNCERTAINTY_THREADS": "torch"},
    "passive": {"SEG_UNCERTAINTY_THREADS": "torch", "OMP_WAIT_POLICY": "PASSIVE"},
    "one_thread": {"SEG_UNCERTAINTY_THREADS": "torch", "OMP_NUM_THREADS": "1"},
    "plugin": {},
}


def suite(bench):
    a = bench.args
    tile, width, height = (128, 256, 256) if a.quick else (512, 768, 512)
    raster = str(make_raster(bench.work / f"threads_{width}x{height}.tif", width, height))
    card = str(make_smp_card(bench.work, "FPN", tile))
    out = {"tile": tile, "width": width, "height": height, "settings": {}}
    print(f"\n[threads] FPN resnet18 T = 1, tile {tile}, raster {width}×{height}: quiet vs one core busy")
    workers = {}
    times = {name: {"quiet": [], "busy": []} for name in SETTINGS}
    try:
        for name, env in SETTINGS.items():
            workers[name] = Worker(Workload(name, "workloads:engine_setup",
                                            dict(card=card, raster=raster,
                                                 options=dict(stochastic=False, n_samples=1)), env=env))
        for r in range(a.rounds):
            for name, worker in workers.items():
                times[name]["quiet"].append(worker.time()["seconds"])
            with busy_core():
                for name, worker in workers.items():
                    times[name]["busy"].append(worker.time()["seconds"])
            print(f"  round {r + 1}: " + "  ".join(f"{n} {t['quiet'][-1]:.1f}/{t['busy'][-1]:.1f}s"
                                                  for n, t in times.items()))
    finally:
        for worker in workers.values():
            worker.close()
    for name, t in times.items():
        row = {"env": SETTINGS[name], "quiet": spread(t["quiet"]), "busy": spread(t["busy"]),
               "busy_over_quiet": spread([b / q for b, q in zip(t["busy"], t["quiet"])]),
               "quiet_over_torch": spread([x / y for x, y in zip(t["quiet"], times["torch"]["quiet"])]),
               "busy_over_torch": spread([x / y for x, y in zip(t["busy"], times["torch"]["busy"])])}
        out["settings"][name] = row
        print(f"  {name:<11} quiet {summary_line(row['quiet'], ' s')}\n"
              f"  {'':<11} busy  {summary_line(row['busy'], ' s')}"
              f"\n  {'':<11} busy/quiet {summary_line(row['busy_over_quiet'])}; vs torch defaults: quiet "
              f"{summary_line(row['quiet_over_torch'])}, busy {summary_line(row['busy_over_torch'])}")
    bench.results["threads"] = out
