"""Inputs and timed workloads shared by the suites: synthetic rasters, model cards, an engine run, the model alone.

Setup functions (``*_setup``) run inside a harness worker and return the callable one timed run calls.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "build" / "plugins"
MODEL_CLASSES = 4


def setup_path():
    PLUGINS.mkdir(parents=True, exist_ok=True)
    link = PLUGINS / "seg_uncertainty"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    if str(PLUGINS) not in sys.path:
        sys.path.insert(0, str(PLUGINS))


def make_raster(path, width, height, seed=0, strip=256):
    """A smooth synthetic 3-band uint8 scene (structure, not white noise), written strip by strip so that a
    65,536-pixel-wide raster costs the writer no more than one strip of memory."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    freqs = [rng.uniform(0.005, 0.03, size=2) for _ in range(3)]
    profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=from_origin(500000, 4200000, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                   nodata=0, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        x = np.arange(width, dtype=np.float32)[None, :]
        for r0 in range(0, height, strip):
            h = min(strip, height - r0)
            y = np.arange(r0, r0 + h, dtype=np.float32)[:, None]
            bands = [127 + 100 * np.sin(f[0] * x + b) * np.cos(f[1] * y - b) + rng.normal(0, 10, (h, width))
                     for b, f in enumerate(freqs)]
            dst.write(np.clip(np.stack(bands), 1, 255).astype(np.uint8), window=Window(0, r0, width, h))
    return path


def make_smp_card(folder, architecture, tile, classes=MODEL_CLASSES):
    """An SMP model with resnet18 encoder and random (seeded) weights, saved with its card; returns the card."""
    import segmentation_models_pytorch as smp
    import torch
    import yaml

    path = Path(folder) / f"{architecture}_{tile}.yaml"
    if path.exists():
        return path
    torch.manual_seed(0)
    model = getattr(smp, architecture)(encoder_name="resnet18", encoder_weights=None, classes=classes,
                                       **({"decoder_dropout": 0.2} if architecture == "FPN" else {}))
    weights = Path(folder) / f"{architecture}_{tile}.pth"
    torch.save(model.state_dict(), weights)
    card = {
        "model": {"_target_": f"segmentation_models_pytorch.{architecture}", "encoder_name": "resnet18",
                  "encoder_weights": None, "in_channels": 3, "classes": classes, "decoder_dropout": 0.2},
        "weights": weights.name,
        "input": {"bands": [1, 2, 3], "scale": 255},
        "tiling": {"model_input_shape": [tile, tile], "step_shape": [tile // 2, tile // 2]},
    }
    path.write_text(yaml.safe_dump(card))
    return path


def make_pointwise_card(folder, tile, classes=MODEL_CLASSES):
    """A trivial per-pixel model (two 1×1 convolutions, TorchScript) whose cost is almost nothing: what is left
    of a run's time is the engine's own."""
    import torch
    import yaml
    from torch import nn

    path = Path(folder) / f"pointwise_{tile}.yaml"
    if path.exists():
        return path
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Tanh(), nn.Conv2d(8, classes, 1)).eval()
    weights = Path(folder) / f"pointwise_{tile}.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros((1, 3, 64, 64))), str(weights))
    card = {
        "weights": weights.name,
        "input": {"bands": [1, 2, 3], "scale": 255},
        "classes": [{"name": f"c{i}", "color": "#1f78b4"} for i in range(classes)],
        "tiling": {"model_input_shape": [tile, tile], "step_shape": [tile // 2, tile // 2]},
    }
    path.write_text(yaml.safe_dump(card))
    return path


def _load(card):
    import warnings

    setup_path()
    from seg_uncertainty.engine.model_loading import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(card, "auto")


def engine_setup(card, raster, options, threads=None, uncertainty=True, warm_raster=None):
    """One ``predict_uncertainty`` run of ``options`` over ``raster`` (class + uncertainty GeoTIFFs).

    ``warm_raster``: a small raster run once at set-up, to warm a worker whose real run is too long to repeat
    (the harness's own warm-up is then set to 0). The engine is imported before torch, as in QGIS, so that its
    thread settings (engine.threads) apply."""
    setup_path()
    from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty

    import torch

    if threads:
        torch.set_num_threads(int(threads))

    loaded = _load(card)
    out = Path(tempfile.mkdtemp(prefix="bench-"))
    outputs = OutputPaths(str(out / "c.tif"), str(out / "u.tif") if uncertainty else None)

    def run():
        summary = predict_uncertainty(raster, loaded, outputs, seed=0, **options)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        return {"tiles": summary.n_tiles, "device": summary.device, "cached": summary.prefix_cached,
                "megapixels": summary.megapixels}

    if warm_raster:
        predict_uncertainty(warm_raster, loaded, outputs, seed=0, **options)
    return run


def model_only_setup(card, raster, n_samples=1, sample_chunk=4, threads=None):
    """The model alone on the tiles a run computes: T = 1 is one eval forward per tile; T > 1 is the cached
    prefix once and the dropout tail T times (chunks of ``sample_chunk``, dropout masks drawn from seeded
    generators made before timing). Everything an engine run adds to this is the engine's overhead."""
    import numpy as np
    import rasterio

    setup_path()
    from seg_uncertainty.engine.dropout import make_generators, set_dropout_active

    import torch

    if threads:
        torch.set_num_threads(int(threads))
    from seg_uncertainty.engine.prefix_cache import build_mc_forward
    from seg_uncertainty.engine.tiling import TileGrid

    loaded = _load(card)
    card_ = loaded.card
    tile = tuple(card_.tile_shape)
    with rasterio.open(raster) as ds:
        grid = TileGrid(ds.height, ds.width, tile, tuple(card_.step_shape))
        tiles = [torch.from_numpy(ds.read([1, 2, 3], window=((r, r + tile[0]), (c, c + tile[1]))).astype(np.float32)
                                  / 255.0)[None] for r in grid.row_starts for c in grid.col_starts]
    model = loaded.model
    if n_samples == 1:
        set_dropout_active(model, False)

        def run():
            with torch.inference_mode():
                for x in tiles:
                    model(x)
            return {"tiles": len(tiles)}

        return run
    set_dropout_active(model, True)
    with torch.inference_mode():
        forward = build_mc_forward(model, torch.zeros((1, 3, 64, 64)))
    chunks = [(t0, min(sample_chunk, n_samples - t0)) for t0 in range(0, n_samples, sample_chunk)]
    gens = {t0: make_generators([(0, 0, 0, t0 + j) for j in range(k)], 0, "cpu") for t0, k in chunks}

    def run():
        with torch.inference_mode():
            for x in tiles:
                state = forward.prefix(x)
                for t0, k in chunks:
                    for g, seed in zip(gens[t0], range(k)):
                        g.manual_seed(seed)
                    forward.tail(state, k, gens[t0])
        return {"tiles": len(tiles)}

    return run


def profile_engine(card, raster, options, out_path, threads=None):
    """cProfile of one warm engine run; writes the top functions (cumulative and own time) to ``out_path``."""
    import cProfile
    import io
    import pstats

    run = engine_setup(card, raster, options, threads)
    run()  # warm
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    run()
    profiler.disable()
    seconds = time.perf_counter() - started
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    text.write(f"one warm run: {seconds:.2f} s (under the profiler)\n\n")
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)
    Path(out_path).write_text(text.getvalue())
    return seconds


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--profile":
    print(profile_engine(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]))
