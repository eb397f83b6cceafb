"""Modes of one run, alternated pair by pair: (a) one deterministic pass, (b) MC Dropout T = 20 as a naive loop
(T full passes per tile), (c) MC Dropout T = 20 with the deterministic prefix cached, (d) TTA d4 (8 views).

Reports the median of the round-by-round ratios (c)/(a), (b)/(c), (d)/(a) with their spread, for an SMP FPN and
Unet (resnet18) on a synthetic 3-band raster.
"""

from harness import Workload, summary_line
from workloads import make_raster, make_smp_card

T = 20
CASES = {
    "a_deterministic": dict(stochastic=False, n_samples=1),
    "b_mc_naive_loop": dict(stochastic=True, n_samples=T, prefix_cache=False, sample_chunk=1),
    "c_mc_cached": dict(stochastic=True, n_samples=T, prefix_cache=True),
    "d_tta_d4": dict(stochastic=False, n_samples=1, tta="d4"),
}


def suite(bench):
    a = bench.args
    tile, width, height = (128, 256, 128) if a.quick else (512, 1024, 512)
    raster = str(make_raster(bench.work / f"modes_{width}x{height}.tif", width, height))
    out = {"tile": tile, "width": width, "height": height, "T": T, "models": {}}
    for architecture in ("FPN", "Unet"):
        card = str(make_smp_card(bench.work, architecture, tile))
        print(f"\n[modes] {architecture} resnet18, tile {tile}, raster {width}×{height}, T = {T}")
        result = bench.alternate([Workload(name, "workloads:engine_setup",
                                           dict(card=card, raster=raster, options=opts))
                                  for name, opts in CASES.items()])
        row = {"cases": result, "ratios": {}}
        for label, num, den in (("(c)/(a)", "c_mc_cached", "a_deterministic"),
                                ("(b)/(c)", "b_mc_naive_loop", "c_mc_cached"),
                                ("(d)/(a)", "d_tta_d4", "a_deterministic")):
            row["ratios"][label] = bench.ratio(result, num, den)
        for name, r in result.items():
            from harness import spread
            print(f"  {name:<18} {summary_line(spread(r['seconds']), ' s')}  peak RSS {r['peak_rss_mb']:.0f} MB")
        for label, s in row["ratios"].items():
            print(f"  {label} = {summary_line(s)}")
        out["models"][architecture] = row
    bench.results["modes"] = out
