"""The cluster engine on a real LocalCluster of 2 worker processes: same pixels and tags as the local run,
a worker killed mid-run, cancel, a block failing on its data, a worker that sees other weights."""

import doctest
import logging
import os
import signal
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from seg_uncertainty.engine import distributed as cluster_engine
from seg_uncertainty.engine.distributed import BlockJob, plan_blocks, predict_uncertainty_distributed
from seg_uncertainty.engine.errors import ClusterError, InferenceCancelled, RasterInputError
from seg_uncertainty.engine.inference import OutputPaths, predict_uncertainty
from seg_uncertainty.engine.model_card import load_model_card
from seg_uncertainty.engine.model_loading import load_model

from conftest import crop_raster, scene_crop
from models import save_smp

distributed = pytest.importorskip("distributed")  # a requirement (requirements.txt); absent only in a bare venv


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster: 2 worker processes of 1 thread each (what `--workers 2` starts)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=logging.ERROR) as local, distributed.Client(local) as client:
        yield client


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """150×130 px of the Landsat scene (NoData corner included) and an SMP U-Net with dropout, 64-px tiles."""
    folder = tmp_path_factory.mktemp("cluster")
    raster = scene_crop(folder)
    card = save_smp(folder, "Unet", classes=3, dropout=0.3, tile=(64, 64), stride=(32, 32))
    return raster, card


def _local(folder, raster, card, **options):
    """The single-process run, with 1 torch thread like each worker (torch's CPU bits depend on the count)."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = OutputPaths(str(folder / "c.tif"), str(folder / "u.tif"), str(folder / "p.tif"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loaded = load_model(load_model_card(card), "cpu")
    summary = predict_uncertainty(raster, loaded, outputs, **options)
    return outputs, summary


def _on_cluster(client, folder, raster, card, **options):
    folder.mkdir(parents=True, exist_ok=True)
    outputs = OutputPaths(str(folder / "c.tif"), str(folder / "u.tif"), str(folder / "p.tif"))
    summary = predict_uncertainty_distributed(client, raster, card, outputs, device="cpu", block_size=64, **options)
    return outputs, summary


def _assert_same_rasters(a, b):
    """Pixels bit for bit, and the same tags, band descriptions, NoData, dtype, grid and georeferencing."""
    for path_a, path_b in zip((a.classes, a.uncertainty, a.probabilities), (b.classes, b.uncertainty, b.probabilities)):
        with rasterio.open(path_a) as x, rasterio.open(path_b) as y:
            np.testing.assert_array_equal(x.read(), y.read())
            assert x.tags() == y.tags()
            assert x.descriptions == y.descriptions
            assert np.array_equal([x.nodata], [y.nodata], equal_nan=True)
            assert {k: v for k, v in x.profile.items() if k != "nodata"} == \
                {k: v for k, v in y.profile.items() if k != "nodata"}  # dtype, grid, CRS, transform, blocks


@pytest.mark.parametrize("options", [
    {"n_samples": 4, "mode": "mutual_information", "seed": 3},                                 # MC Dropout
    {"stochastic": False, "tta": "d4", "mode": "variance", "seed": 0},                         # TTA
    {"n_samples": 3, "tta": "flip", "mode": "entropy", "seed": 9},                             # MC × TTA
], ids=["mc", "tta", "mc_x_tta"])
def test_cluster_outputs_equal_the_single_process_run(tmp_path, cluster, scene, one_torch_thread, options):
    raster, card = scene
    local, local_summary = _local(tmp_path / "local", raster, card, **options)
    remote, summary = _on_cluster(cluster, tmp_path / "cluster", raster, card, **options)
    _assert_same_rasters(local, remote)
    assert summary.n_blocks == 9 and summary.n_workers == 2
    assert len(set(summary.block_workers)) == 2  # both workers computed blocks
    assert summary.n_tiles == local_summary.n_tiles and summary.tiles_computed > summary.n_tiles  # halos
    assert summary.uncertainty_max == local_summary.uncertainty_max
    assert summary.uncertainty_min == local_summary.uncertainty_min
    assert summary.valid_pixels == local_summary.valid_pixels
    assert summary.uncertainty_mean == pytest.approx(local_summary.uncertainty_mean, rel=1e-12)
    assert sorted(os.listdir(tmp_path / "cluster")) == ["c.tif", "p.tif", "u.tif"]  # no staging left


def test_a_worker_killed_mid_run_changes_no_pixel(tmp_path, cluster, scene, one_torch_thread):
    raster, card = scene
    options = {"n_samples": 4, "mode": "entropy", "seed": 21}
    local, _ = _local(tmp_path / "local", raster, card, **options)
    pids = cluster.run(os.getpid)
    killed = {}

    def kill_a_busy_worker(percent, text):
        if killed:
            return
        for address, keys in cluster.processing().items():
            if keys and address in pids:
                os.kill(pids[address], signal.SIGKILL)
                killed.update(address=address, keys=list(keys))
                return

    remote, summary = _on_cluster(cluster, tmp_path / "cluster", raster, card, progress=kill_a_busy_worker,
                                  **options)
    assert killed, "no worker was busy when the first block finished"
    _assert_same_rasters(local, remote)
    lost = [int(key.rsplit("-", 1)[1]) for key in killed["keys"]]
    assert all(summary.block_workers[i] != killed["address"] for i in lost)  # recomputed elsewhere
    assert sorted(os.listdir(tmp_path / "cluster")) == ["c.tif", "p.tif", "u.tif"]
    cluster.wait_for_workers(2, timeout=120)  # the nanny restarts the killed process for the next tests


def test_cancel_leaves_no_file(tmp_path, cluster, scene):
    raster, card = scene
    progressed = threading.Event()
    out = tmp_path / "out"
    with pytest.raises(InferenceCancelled):
        _on_cluster(cluster, out, raster, card, n_samples=4, seed=1,
                    progress=lambda percent, text: progressed.set(), is_cancelled=progressed.is_set)
    assert progressed.is_set()  # cancelled after a block was assembled, with others running or pending
    assert list(out.iterdir()) == []


def test_a_block_failing_on_its_data_fails_the_run_with_the_block_named(tmp_path, cluster, scene):
    """A raster cut short on disk: the blocks at its top read fine, the bottom ones cannot be read."""
    raster, card = scene
    folder = tmp_path / "data"
    folder.mkdir()
    broken = crop_raster(raster, folder / "broken.tif", Window(0, 0, 150, 130), tiled=False, compress=None,
                   interleave="band", blockysize=1)
    size = broken.stat().st_size
    with open(broken, "r+b") as f:
        f.truncate(size - 150 * 20)  # the last 20 rows of band 3 are gone
    out = tmp_path / "out"
    with pytest.raises(RasterInputError, match=r"Block \d+ \(rows (64|128)\.\.\d+, columns \d+\.\.\d+\) on worker"):
        _on_cluster(cluster, out, broken, card, n_samples=2, seed=1)
    assert list(out.iterdir()) == []


def test_a_worker_that_sees_other_weights_refuses_the_block(tmp_path, cluster, scene):
    raster, card = scene
    staging = tmp_path / "staging"
    staging.mkdir()
    real = load_model_card(card)
    from seg_uncertainty.engine.model_card import card_file_hash

    job = BlockJob(str(raster), str(real.path), card_file_hash(real.path), "0" * 64, "cpu",
                   {"outputs": {}, "n_samples": 1, "seed": 0}, str(staging))
    future = cluster.submit(cluster_engine._run_block, job, 0, (0, 0, 32, 32), pure=False)
    with pytest.raises(ClusterError,
                       match="Block 0 .* sees another weights at .*SHA-256 .* the client's is 000000000000"):
        future.result()
    assert list(staging.iterdir()) == []


def test_blocks_lie_on_the_tile_grid_and_cover_the_raster_once():
    blocks = plan_blocks(1000, 700, (512, 512), (256, 256), 600)
    assert {b[0] for b in blocks} == {0, 512} and {b[1] for b in blocks} == {0, 512}  # 600 → 2 strides
    coverage = np.zeros((1000, 700), int)
    for r, c, h, w in blocks:
        coverage[r : r + h, c : c + w] += 1
    assert (coverage == 1).all()
    assert plan_blocks(10, 10, (64, 64), (32, 32)) == [(0, 0, 10, 10)]
    assert doctest.testmod(cluster_engine).failed == 0


def test_scheduler_parameter_runs_the_algorithm_on_the_cluster(tmp_path, qgis_app, one_torch_thread, cluster, scene):
    """uncertainty:mcdropout with SCHEDULER = the running LocalCluster's scheduler: the toolbox's local files."""
    import processing

    raster, card = scene
    results = {}
    for name, scheduler in (("local", ""), ("cluster", cluster.scheduler.address)):
        (tmp_path / name).mkdir()
        results[name] = processing.run("uncertainty:mcdropout", {
            "INPUT": str(raster), "MODEL": str(card), "N_SAMPLES": 3, "SEED": 4, "DEVICE": "cpu",
            "OUTPUT": str(tmp_path / name / "classes.tif"), "OUTPUT_PROBABILITIES": str(tmp_path / name / "p.tif"),
            "SCHEDULER": scheduler,
        })
    local = OutputPaths(results["local"]["OUTPUT"], results["local"]["OUTPUT_UNCERTAINTY"],
                        str(tmp_path / "local" / "p.tif"))
    remote = OutputPaths(results["cluster"]["OUTPUT"], results["cluster"]["OUTPUT_UNCERTAINTY"],
                         str(tmp_path / "cluster" / "p.tif"))
    _assert_same_rasters(local, remote)
    assert Path(remote.uncertainty).name == "classes_mc_uncertainty.tif"
    assert Path(remote.uncertainty).with_suffix(".qml").read_text() != ""  # styled like a local run
    for key in ("UNCERTAINTY_MAX", "UNCERTAINTY_MIN", "N_TILES", "SEED_USED"):
        assert results["cluster"][key] == results["local"][key]
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir() if not p.name.endswith(".aux.xml")) == \
        ["classes.qml", "classes.tif", "classes_mc_uncertainty.qml", "classes_mc_uncertainty.tif", "p.tif"]


def test_scheduler_without_dask_says_how_to_install_it(tmp_path, qgis_app, scene, monkeypatch):
    """With dask not importable (None in sys.modules: what Python does for a module that cannot be imported)."""
    import sys

    import processing
    from qgis.core import QgsProcessingException

    raster, card = scene
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(QgsProcessingException,
                       match=r"dask\[distributed\].*install_dependencies.*pip install -r requirements.txt"):
        processing.run("uncertainty:mcdropout", {"INPUT": str(raster), "MODEL": str(card), "DEVICE": "cpu",
                                                 "OUTPUT": str(tmp_path / "c.tif"), "SCHEDULER": "tcp://127.0.0.1:1"})
    assert list(tmp_path.iterdir()) == []


def test_scheduler_that_does_not_answer_is_named(tmp_path, qgis_app, scene):
    import processing
    from qgis.core import QgsProcessingException

    raster, card = scene
    with pytest.raises(QgsProcessingException, match=r"SCHEDULER: no Dask scheduler answers at tcp://127.0.0.1:1 "):
        processing.run("uncertainty:tta", {"INPUT": str(raster), "MODEL": str(card), "DEVICE": "cpu",
                                           "OUTPUT": str(tmp_path / "c.tif"), "SCHEDULER": "127.0.0.1:1"})
    assert list(tmp_path.iterdir()) == []
