"""sha256 of the rasters the engine writes for a fixed set of demo runs, to prove a refactor changes no pixel.

Usage: python scripts/engine_fingerprint.py OUT_DIR > hashes.txt ; run before and after, then diff the files.
Each run writes class, uncertainty and probability GeoTIFFs; the lines are "run/file sha256" plus the evaluation
report's JSON numbers (sorted), so a changed pixel or metric shows as a differing line.
"""

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
PKG = ROOT.name
from importlib import import_module  # noqa: E402

inference = import_module(f"{PKG}.engine.inference")
model_loading = import_module(f"{PKG}.engine.model_loading")
model_card = import_module(f"{PKG}.engine.model_card")
evaluation = import_module(f"{PKG}.engine.evaluation")
report = import_module(f"{PKG}.engine.report")

RUNS = {
    "mc_entropy": dict(n_samples=4, seed=0),
    "mc_mi_block": dict(n_samples=3, seed=1, mode="mutual_information", block=(100, 200, 300, 500)),
    "mc_variance_tta": dict(n_samples=2, seed=2, mode="variance", tta="flip", tile=(192, 160), stride=(96, 80)),
    "tta_only_noprefix": dict(stochastic=False, tta="d4", prefix_cache=False, batch_size=3, seed=3),
}


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = ROOT / "resources" / "demo"
    card = model_card.load_model_card(str(demo / "demo_model.yaml"))
    loaded = model_loading.load_model(card, "cpu")
    for name, kwargs in RUNS.items():
        paths = inference.OutputPaths(
            str(out / f"{name}_classes.tif"), str(out / f"{name}_unc.tif"), str(out / f"{name}_prob.tif")
        )
        inference.predict_uncertainty(str(demo / "demo_scene.tif"), loaded, paths, **kwargs)
        for p in (paths.classes, paths.uncertainty, paths.probabilities):
            print(f"{Path(p).name} {sha(p)}", flush=True)
    results = evaluation.evaluate_rasters(
        str(out / "mc_entropy_prob.tif"), reference_path=str(demo / "demo_labels.tif"),
        uncertainty_path=str(out / "mc_entropy_unc.tif"),
    )
    report.write_report(results, str(out / "report.html"), str(out / "report.json"))
    numbers = _numbers(json.loads((out / "report.json").read_text()))
    print("evaluation", hashlib.sha256(json.dumps(numbers, sort_keys=True).encode()).hexdigest())


_VARYING = {"seconds", "created", "html", "json", "paths", "inputs"}


def _numbers(obj):
    """The report without fields that legitimately change between runs (times, paths)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in _VARYING}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


if __name__ == "__main__":
    main(sys.argv[1])
