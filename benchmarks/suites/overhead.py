"""Engine overhead against model time, FPN-ResNet18, 512-px tiles, T = 1 (one eval pass) and T = 20 (MC
Dropout, prefix cached).

"Model" is the network alone on the same tiles (``workloads.model_only_setup``: at T = 20 the cached prefix
once and the dropout tail 20 times per tile); "engine" is a whole ``predict_uncertainty`` run writing the class
and uncertainty rasters. The two alternate round by round; overhead = engine / model - 1, median and spread.
Targets: ≤ 10 % at T = 1, ≤ 25 % at T = 20.

Two rasters: 1024 × 1024 (9 tiles), where a run's fixed costs (opening, creating and finishing the outputs,
overviews) weigh on a few seconds of model time, and 2048 × 2048 (49 tiles), closer to what users run, where
they are spread over five times the tiles; the difference between the two tells the fixed cost from the
per-tile one.

``--torch-threads N`` fixes torch's threads in both cases (results under ``overhead_threadsN``). On a 2-core
machine torch's default is 2 threads, and the engine's background reader and writer then compete with the model
for the cores, which the model-alone case never does; with N = 1 they have a core of their own, as they have on
any machine with a core to spare, and the ratio measures the engine's own work.
"""

from pathlib import Path

from harness import Workload, spread, summary_line
from workloads import engine_setup, make_raster, make_smp_card  # noqa: F401 - names the workers import


def suite(bench):
    a = bench.args
    sizes = [(128, 384, 256)] if a.quick else [(512, 1024, 1024), (512, 2048, 2048)]
    out = {}
    for tile, width, height in sizes:
        out[f"{width}x{height}"] = _one_size(bench, tile, width, height)
    key = f"overhead_threads{a.torch_threads}" if a.torch_threads else "overhead"
    bench.results[key] = out


def _one_size(bench, tile, width, height):
    a = bench.args
    raster = str(make_raster(bench.work / f"overhead_{width}x{height}.tif", width, height))
    card = str(make_smp_card(bench.work, "FPN", tile))
    out = {"tile": tile, "width": width, "height": height}
    threads = a.torch_threads or None
    for t in (1, 20):
        options = dict(stochastic=False, n_samples=1) if t == 1 else dict(stochastic=True, n_samples=t)
        print(f"\n[overhead] FPN resnet18, tile {tile}, raster {width}×{height}, T = {t}"
              + (f", torch threads {threads}" if threads else ""))
        workloads = [
            Workload("model", "workloads:model_only_setup", dict(card=card, raster=raster, n_samples=t,
                                                                 threads=threads)),
            Workload("engine", "workloads:engine_setup", dict(card=card, raster=raster, options=options,
                                                              threads=threads)),
        ]
        if a.baseline:  # the other checkout's engine, alternated with this one
            workloads.append(Workload("baseline", "workloads:engine_setup",
                                      dict(card=card, raster=raster, options=options, threads=threads),
                                      root=str(Path(a.baseline) / "benchmarks")))
        result = bench.alternate(workloads)
        out[f"T{t}"] = {"cases": result}
        for name, r in result.items():
            print(f"  {name:<8} {summary_line(spread(r['seconds']), ' s')}")
        for name in [w.name for w in workloads[1:]]:
            ratio = bench.ratio(result, name, "model")
            overhead = {k: (v - 1.0 if k != "n" else v) for k, v in ratio.items()}
            out[f"T{t}"][f"{name}_overhead"] = overhead
            print(f"  {name} overhead ({name} / model - 1) = "
                  f"{summary_line({k: (v * 100 if k != 'n' else v) for k, v in overhead.items()}, ' %', 1)}")
    return out
