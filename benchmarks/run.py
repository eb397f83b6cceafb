"""Speed and memory of the engine, every figure measured in this run (``make bench``).

Cases, each in its own subprocess so that its peak memory (ru_maxrss) is its own:
  (a) one deterministic tiled pass (model in eval, T = 1)
  (b) MC Dropout T = 20, naive loop: T full passes per tile, one after the other (what other tools do)
  (c) MC Dropout T = 20 with the deterministic prefix cached
  (d) TTA d4: 8 views per tile, model in eval
Each time is the best of REPEATS runs in the same process (model loaded once; set-up such as the fx trace is
inside every run).
for an SMP FPN (resnet18, decoder_dropout) and an SMP Unet (resnet18, Dropout2d before the head), on a synthetic
3-band raster; then (c) on a raster 4× as tall, for memory. Prints a table and the ratios (c)/(a), (b)/(c),
(d)/(a) and memory 4×/1×; writes build/bench.json. Uses CUDA when torch sees one.

Usage: python benchmarks/run.py [--quick] [--tile 512] [--width 1024] [--height 512]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "build" / "plugins"
T = 20
REPEATS = 2


def _setup_path():
    PLUGINS.mkdir(parents=True, exist_ok=True)
    link = PLUGINS / "seg_uncertainty"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(PLUGINS))


def make_raster(path, width, height, seed=0):
    """A smooth synthetic 3-band uint8 scene (so that the model sees structure, not white noise)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    bands = []
    for b in range(3):
        f = rng.uniform(0.005, 0.03, size=2)
        bands.append(127 + 100 * np.sin(f[0] * x + b) * np.cos(f[1] * y - b) + rng.normal(0, 10, (height, width)))
    data = np.clip(np.stack(bands), 1, 255).astype(np.uint8)
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(500000, 4200000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                   nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def make_card(folder, architecture, tile):
    import segmentation_models_pytorch as smp
    import torch
    import yaml

    torch.manual_seed(0)
    model = getattr(smp, architecture)(encoder_name="resnet18", encoder_weights=None, classes=4,
                                       **({"decoder_dropout": 0.2} if architecture == "FPN" else {}))
    weights = Path(folder) / f"{architecture}.pth"
    torch.save(model.state_dict(), weights)
    card = {
        "model": {"_target_": f"segmentation_models_pytorch.{architecture}", "encoder_name": "resnet18",
                  "encoder_weights": None, "in_channels": 3, "classes": 4, "decoder_dropout": 0.2},
        "weights": weights.name,
        "input": {"bands": [1, 2, 3], "scale": 255},
        "tiling": {"model_input_shape": [tile, tile], "step_shape": [tile // 2, tile // 2]},
    }
    path = Path(folder) / f"{architecture}.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


CASES = {
    "a_deterministic": dict(stochastic=False, n_samples=1),
    "b_mc_naive_loop": dict(stochastic=True, n_samples=T, prefix_cache=False, sample_chunk=1),
    "c_mc_cached": dict(stochastic=True, n_samples=T, prefix_cache=True),
    "d_tta_d4": dict(stochastic=False, n_samples=1, tta="d4"),
}


def run_case(card, raster, case, out_dir):
    """Child process: load, warm up, run one case; print JSON with seconds and peak RSS."""
    import warnings

    _setup_path()
    import torch

    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
    from seg_uncertainty.engine.model_loading import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(card, "auto")
    options = dict(CASES[case])
    outputs = OutputPaths(str(Path(out_dir) / "c.tif"), str(Path(out_dir) / "u.tif"))
    lines = []
    seconds = float("inf")
    for _ in range(REPEATS):  # best of REPEATS: the least disturbed by whatever else the machine runs
        started = time.perf_counter()
        summary = predict_uncertainty(raster, loaded, outputs, seed=0, log=lines.append, **options)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if loaded.device.type == "cuda" else None
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "gpu_peak_mb": gpu_mb, "device": summary.device,
                      "tiles": summary.n_tiles, "cached": summary.prefix_cached, "megapixels": summary.megapixels}))


def _child(card, raster, case):
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, __file__, "--child", str(card), str(raster), case, out],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--models", default="FPN,Unet")
    parser.add_argument("--quick", action="store_true", help="small tiles and raster, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.tile, args.width, args.height = 128, 256, 128
    _setup_path()
    results = {"tile": args.tile, "width": args.width, "height": args.height, "T": T, "models": {}}
    with tempfile.TemporaryDirectory() as work:
        raster1 = Path(work) / "raster_1x.tif"
        raster4 = Path(work) / "raster_4x.tif"
        make_raster(raster1, args.width, args.height)
        make_raster(raster4, args.width, 4 * args.height)
        for architecture in args.models.split(","):
            card = make_card(work, architecture, args.tile)
            row = {case: _child(card, raster1, case) for case in CASES}
            row["c_mc_cached_4x"] = _child(card, raster4, "c_mc_cached")
            results["models"][architecture] = row
            _print_model(architecture, row, args)
    results["device"] = row["a_deterministic"]["device"]
    out = ROOT / "build" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


def _print_model(name, row, args):
    print(f"\n{name} resnet18, tile {args.tile}, raster {args.width}×{args.height} "
          f"(4×: {args.width}×{4 * args.height}), "
          f"T = {T}, device {row['a_deterministic']['device']}, prefix cached: {row['c_mc_cached']['cached']}")
    print(f"{'case':<22}{'tiles':>6}{'seconds':>10}{'s/Mpx':>10}{'peak RSS MB':>14}")
    for case, r in row.items():
        print(f"{case:<22}{r['tiles']:>6}{r['seconds']:>10.2f}{r['seconds'] / r['megapixels']:>10.2f}"
              f"{r['peak_rss_mb']:>14.0f}")
    a, b, c, d = (row[k]["seconds"] for k in ("a_deterministic", "b_mc_naive_loop", "c_mc_cached", "d_tta_d4"))
    print(f"ratios: (c)/(a) = {c / a:.2f}  (b)/(c) = {b / c:.1f}  (d)/(a) = {d / a:.2f}  "
          f"memory 4×/1× (cached MC) = {row['c_mc_cached_4x']['peak_rss_mb'] / row['c_mc_cached']['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_case(*sys.argv[2:6])
    else:
        main()
