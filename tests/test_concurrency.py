"""Cancel at random moments, and several runs at once in threads (as QGIS runs background tasks).

A cancelled run must end in QgsProcessingException("Cancelled…") within one tile of the request and leave no
file; a run the cancel came too late for must be complete and equal to an uncancelled one. Runs in parallel
threads, each with its own QgsProcessingContext and feedback, must give bit for bit what they give alone:
dropout masks come from per-sample generators, never from torch's global RNG.
"""

import random
import threading
import time

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window

from conftest import run_algorithm, shared_raster
from models import PointwiseNet, save_torchscript, write_card


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _read_all(result):
    arrays = {}
    for key in ("OUTPUT", "OUTPUT_UNCERTAINTY", "OUTPUT_PROBABILITIES"):
        if result.get(key):
            with rasterio.open(result[key]) as ds:
                arrays[key] = ds.read()
    return arrays


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype
        assert a[key].tobytes() == b[key].tobytes(), key  # bit for bit, NaN included


# --- cancel at random moments ---------------------------------------------------------------------------


def _counting_feedback():
    from qgis.core import QgsProcessingFeedback

    class CountingFeedback(QgsProcessingFeedback):
        """Counts finished tiles (the engine's "Tile k/n" progress texts); cancel_now() notes the count."""

        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()
            self.tiles = 0
            self.tiles_at_cancel = None

        def setProgressText(self, text):  # noqa: N802 - QGIS's name
            if text.startswith("Tile "):
                with self.lock:
                    self.tiles += 1
            super().setProgressText(text)

        def cancel_now(self):
            with self.lock:  # no tile can be counted between the snapshot and the cancel
                self.tiles_at_cancel = self.tiles
                self.cancel()

    return CountingFeedback()


@pytest.fixture(scope="module")
def cancel_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cancel")
    rng = np.random.default_rng(3)
    with rasterio.open(folder / "in.tif", "w", driver="GTiff", width=96, height=64, count=3, dtype="uint8",
                       crs="EPSG:32618", transform=rasterio.Affine(10, 0, 0, 0, -10, 0)) as dst:
        dst.write(rng.integers(0, 256, (3, 64, 96), dtype=np.uint8))
    card = write_card(folder, save_torchscript(folder, PointwiseNet(3, 4, seed=2)), classes=4, tile=(16, 16),
                      stride=(16, 16))
    return folder / "in.tif", card


def test_cancel_at_random_moments_stops_within_one_tile(qgis_app, cancel_setup, tmp_path):
    from qgis.core import QgsProcessingException

    raster, card = cancel_setup

    def parameters(out):
        out.mkdir()
        return {"INPUT": str(raster), "MODEL": str(card), "N_SAMPLES": 6, "SEED": 4, "OUTPUT": str(out / "c.tif"),
                "OUTPUT_PROBABILITIES": str(out / "p.tif")}

    started = time.perf_counter()
    feedback = _counting_feedback()
    reference = _read_all(run_algorithm("uncertainty:mcdropout", parameters(tmp_path / "ref"), feedback))
    duration = time.perf_counter() - started
    assert feedback.tiles == 24  # 64 × 96 in 16-px tiles
    rng = random.Random(8)
    outcomes = []
    for k in range(8):
        feedback = _counting_feedback()
        out = tmp_path / f"run{k}"
        timer = threading.Timer(rng.uniform(0.0, 1.2 * duration), feedback.cancel_now)
        timer.start()
        try:
            result = run_algorithm("uncertainty:mcdropout", parameters(out), feedback)
        except QgsProcessingException as e:
            assert str(e).startswith("Cancelled"), str(e)
            assert feedback.tiles_at_cancel is not None
            assert feedback.tiles - feedback.tiles_at_cancel <= 1  # at most the tile in flight finishes
            assert list(out.iterdir()) == []
            outcomes.append("cancelled")
        else:
            _assert_bitwise_equal(_read_all(result), reference)
            outcomes.append("finished")
        finally:
            timer.join()
    assert "cancelled" in outcomes, outcomes


# --- runs in parallel threads ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smp_cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("threads")
    window = Window(300, 250, 100, 100)
    with rasterio.open(shared_raster("RGB.byte.tif")) as src:
        profile = src.profile.copy()
        profile.update(width=100, height=100, transform=src.window_transform(window))
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        with rasterio.open(folder / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
    fpn = _save_tiny_smp(folder, "FPN", classes=3, seed=1)
    unet = _save_tiny_smp(folder, "Unet", classes=4, seed=2)
    return folder / "crop.tif", fpn, unet


def _save_tiny_smp(folder, architecture, classes, seed):
    """An SMP model small enough for two CPU cores (timm resnet10t cut to depth 3, as in test_model_loading)
    with random weights, dropout 0.3 (FPN's own decoder_dropout; a Dropout2d before the Unet head), its card."""
    import segmentation_models_pytorch as smp
    import yaml

    kwargs = {"encoder_name": "tu-resnet10t", "encoder_depth": 3, "encoder_weights": None, "in_channels": 3,
              "classes": classes}
    kwargs.update({"decoder_channels": [32, 16, 8]} if architecture == "Unet" else
                  {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32, "upsampling": 1})
    torch.manual_seed(seed)
    model = getattr(smp, architecture)(**kwargs)
    torch.save(model.state_dict(), folder / f"{architecture}.pth")
    card = {"model": {"_target_": f"segmentation_models_pytorch.{architecture}", **kwargs, "decoder_dropout": 0.3},
            "weights": f"{architecture}.pth", "input": {"bands": [1, 2, 3], "scale": 255},
            "tiling": {"model_input_shape": [64, 64], "step_shape": [32, 32]}}
    path = folder / f"{architecture}.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def _job(raster, card, seed, out):
    out.mkdir()
    return {"INPUT": str(raster), "MODEL": str(card), "N_SAMPLES": 3, "SEED": seed, "TTA_MODE": "flip",
            "UNCERTAINTY_MODE": "mutual_information", "OUTPUT": str(out / "c.tif"),
            "OUTPUT_PROBABILITIES": str(out / "p.tif")}


def _in_threads(jobs, disturb_global_rng=False):
    """processing.run of each job in its own thread with its own context and feedback; returns the arrays."""
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    results, errors = [None] * len(jobs), []
    barrier = threading.Barrier(len(jobs) + disturb_global_rng)
    stop = threading.Event()

    def work(i, parameters):
        try:
            context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
            barrier.wait()
            results[i] = _read_all(run_algorithm("uncertainty:mcdropout", parameters, feedback, context))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def disturb():
        barrier.wait()
        g = 0
        while not stop.is_set():  # reseeds and draws from torch's global RNG all the time
            torch.manual_seed(g)
            torch.rand(64)
            g += 1
            time.sleep(0.001)

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    if disturb_global_rng:
        threads.append(threading.Thread(target=disturb))
    for t in threads:
        t.start()
    for t in threads[: len(jobs)]:
        t.join(timeout=300)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors
    return results


_MODULE_CALL = (torch.nn.Module.__call__, torch.nn.Module.__getattr__)


@pytest.fixture
def torch_module_call_restored():
    """torch.fx patches torch.nn.Module.__call__/__getattr__ on the class while it traces; two traces at once
    can leave the patch in place for good, which breaks every later model call of the process. Put it back
    (so one failure here does not fail every later test) and report it."""
    yield
    leaked = (torch.nn.Module.__call__, torch.nn.Module.__getattr__) != _MODULE_CALL
    torch.nn.Module.__call__, torch.nn.Module.__getattr__ = _MODULE_CALL
    assert not leaked, "torch.nn.Module.__call__ was left patched by torch.fx tracing"


def test_parallel_runs_equal_runs_alone(qgis_app, smp_cards, tmp_path, torch_module_call_restored):
    raster, fpn, unet = smp_cards
    alone = [_read_all(run_algorithm("uncertainty:mcdropout", _job(raster, card, seed, tmp_path / name)))
             for name, card, seed in (("fpn_alone", fpn, 5), ("unet_alone", unet, 6))]
    together = _in_threads([_job(raster, fpn, 5, tmp_path / "fpn"), _job(raster, unet, 6, tmp_path / "unet"),
                            _job(raster, fpn, 5, tmp_path / "fpn_again")], disturb_global_rng=True)
    _assert_bitwise_equal(together[0], alone[0])
    _assert_bitwise_equal(together[1], alone[1])
    _assert_bitwise_equal(together[2], alone[0])
    assert np.nanmax(alone[0]["OUTPUT_PROBABILITIES"]) > 0  # sanity: real outputs
    assert alone[0]["OUTPUT_PROBABILITIES"].shape == (3, 100, 100)
    assert alone[1]["OUTPUT_PROBABILITIES"].shape == (4, 100, 100)
