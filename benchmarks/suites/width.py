"""Peak memory and time against the raster's width: 1024 rows (256 with --quick), widths 2,048 / 16,384 /
65,536, 512-px tiles, 4 classes, a trivial per-pixel model, T = 1.

Each width runs in its own worker (fresh process: its VmHWM is the run's peak), one width at a time so that
two big runs never hold memory together. Each worker is warmed up on a small raster; seconds are the median
of up to 3 runs (1 at 65,536) with their spread.
The figure of merit is peak RSS at 65,536 / peak RSS at 2,048 (flat memory: ≤ 1.10).
"""

from harness import Workload, spread, summary_line
from workloads import make_pointwise_card, make_raster

WIDTHS = (2048, 16384, 65536)


def suite(bench):
    a = bench.args
    height, widths = (256, (2048, 8192)) if a.quick else (1024, WIDTHS)
    card = str(make_pointwise_card(bench.work, 512))
    warm = str(make_raster(bench.work / "width_warm.tif", 1024, 512))
    out = {"height": height, "tile": 512, "classes": 4, "T": 1, "widths": {}}
    print(f"\n[width] {height} rows, 512-px tiles, 4 classes, per-pixel model, T = 1")
    for width in widths:
        raster = str(make_raster(bench.work / f"width_{width}x{height}.tif", width, height))
        result = bench.alternate([Workload(f"w{width}", "workloads:engine_setup",
                                           dict(card=card, raster=raster,
                                                options=dict(stochastic=False, n_samples=1),
                                                warm_raster=warm))],
                                 rounds=max(1, min(a.rounds, 3 if width < 65536 else 1)), warmup=0)[f"w{width}"]
        s = spread(result["seconds"])
        out["widths"][width] = {"seconds": s, "peak_rss_mb": result["peak_rss_mb"],
                                "megapixels": result["info"]["megapixels"]}
        print(f"  width {width:>6}: peak RSS {result['peak_rss_mb']:>7.0f} MB, {summary_line(s, ' s')}")
    first, last = out["widths"][widths[0]], out["widths"][widths[-1]]
    out["rss_ratio"] = last["peak_rss_mb"] / first["peak_rss_mb"]
    print(f"  peak RSS {widths[-1]} / {widths[0]} = {out['rss_ratio']:.3f}")
    bench.results["width"] = out
