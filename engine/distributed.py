"""One raster over a Dask cluster: one task per block of the tile grid, assembled into the local run's outputs.

Why this works bit for bit: :func:`engine.inference.predict_uncertainty` computes any rectangle ``block`` of
the outputs from the tiles of the raster's *global* grid that touch it, each tile seeded by (SEED, tile row,
tile column), so a block's pixels do not depend on who computes it, where, or next to what. This module only
cuts, ships and glues:

1. **Plan** (:func:`plan_blocks`): the raster is cut into blocks whose edges lie on multiples of the tile
   stride, so every edge is a tile start of the grid and a block reads a halo of at most one tile. A block
   computes every tile that touches it, so a tile under an inner edge is computed by both neighbours: with
   tiles twice the stride and blocks of ``k`` strides, a block runs ``(k + 1)²`` tiles for ``k²`` tiles' worth
   of output (+13 % at ``k = 16``). Bigger blocks: less halo, coarser progress and load balance.
2. **Run**: one task per block (:func:`_run_block`), submitted with ``pure=False`` and keys unique to the run.
   A worker process loads the model once (:func:`_worker_model`) and keeps it for every later block of the same
   card and weights; before that first load it checks the SHA-256 of the card file and of the weights it sees
   against the client's, so a worker with another copy of the model refuses to compute instead of writing
   different pixels. Blocks of one process run one at a time (a loaded model holds the dropout state of the run
   that uses it), with as many torch threads as the worker has threads: on CPU, one worker per machine with
   ``--nthreads`` = its cores, or several with fewer; on GPU, one worker per GPU.
3. **Stage**: each task writes its block as GeoTIFFs (by the same writer as a local run: temporary name, then
   rename) into a hidden staging folder ``.{class stem}.staging-{run id}`` beside the class map, which is why
   inputs and outputs must be on storage every worker sees at the same path.
4. **Assemble**: the client copies every finished block into the final outputs (created like a local run's:
   same tags, band descriptions, NoData, profile) while the others still run, deletes the block's staging files,
   and when all blocks are in, checks and renames every output into place at once. On success, failure or
   cancel, the staging folder is removed.

Faults: a worker that dies mid-block loses only its unfinished blocks; the scheduler runs them again on
another worker (Dask's own retry of lost tasks), and as blocks are pure the result is unchanged. A block that
fails for a data reason (an :class:`~engine.errors.UncertaintyError`: unreadable strip, model error on a tile)
fails the run with the block named. Cancel (``is_cancelled()`` true, or ``KeyboardInterrupt``) cancels every
pending task and drops a marker file that running tasks poll (at most every half second, like the local run's
cancel check, within one tile), then waits for the staging folder to empty and removes it.

Dask is imported inside the functions: the engine and the QGIS plugin import without it, and asking for a
cluster without it raises :class:`~engine.errors.DependencyMissingError` saying how to install it.

Why one module of ~580 lines: plan, run, stage and assemble share one contract (the staging folder's names, the
cancel marker, the block result dict) that no other module uses; split, each half would only make sense with the
other open beside it.
"""

import contextlib
import os
import secrets
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .errors import (
    ClusterError,
    DependencyMissingError,
    InferenceCancelled,
    InvalidOptionError,
    OutputWriteError,
    RasterInputError,
    UncertaintyError,
)
from .inference import OutputPaths, RunSummary
from .options import TTAMode, UncertaintyMode, look_up_option

__all__ = [
    "BlockJob",
    "ClusterRunSummary",
    "DASK_INSTALL_HINT",
    "DEFAULT_BLOCK_STRIDES",
    "connect_scheduler",
    "plan_blocks",
    "predict_uncertainty_distributed",
]

#: Default block edge, in tile strides: 16 strides of a 512-px tile at stride 256 is 4,096 px (16.8 Mpx).
DEFAULT_BLOCK_STRIDES = 16

DASK_INSTALL_HINT = (
    "Running on a Dask cluster needs the Python package 'dask[distributed]' ({error}). Fix: run "
    "uncertainty:install_dependencies (it installs requirements.txt, dask included), or from the plugin folder "
    "`python -m pip install -r requirements.txt -c qgis-constraints.txt` with the Python that runs the plugin "
    "(see the README), then restart QGIS; or leave SCHEDULER empty to run on this computer."
)

_CANCEL_MARKER = "CANCELLED"
_CANCEL_POLL_S = 0.5
_CLIENT_POLL_S = 0.05
_STAGING_REMOVAL_TIMEOUT_S = 600.0


def _import_distributed():
    try:
        import distributed
    except ImportError as e:
        raise DependencyMissingError(DASK_INSTALL_HINT.format(error=e)) from e
    return distributed


def connect_scheduler(address, timeout=10):
    """A ``distributed.Client`` connected to the scheduler already running at ``address`` (``tcp://host:8786``).

    Never starts a scheduler or workers. Raises :class:`ClusterError` when nothing answers within ``timeout``
    seconds or no worker is connected, and :class:`DependencyMissingError` without dask.
    """
    distributed = _import_distributed()
    address = str(address).strip()
    if "://" not in address:
        address = "tcp://" + address
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterError(
            f"SCHEDULER: no Dask scheduler answers at {address} within {timeout} s ({type(e).__name__}: {e}). "
            "Start one with `dask scheduler` on that machine and workers with `dask worker ADDRESS`, or leave "
            "SCHEDULER empty to run on this computer."
        ) from e
    if not client.scheduler_info().get("workers"):
        client.close()
        raise ClusterError(
            f"SCHEDULER: the Dask scheduler at {address} has no worker. Start at least one with "
            f"`dask worker {address} --nthreads 1` on a machine that sees the input and output folders."
        )
    return client


def plan_blocks(height, width, tile, stride, block_size=None):
    """Blocks ``(row, col, height, width)`` covering a ``height`` × ``width`` raster, row by row.

    ``block_size`` (pixels, one number or (rows, cols); default :data:`DEFAULT_BLOCK_STRIDES` strides) is
    rounded down to a multiple of the stride (at least one stride) per axis, so every inner block edge is a
    tile start of the global grid; the last block of a row or column ends at the border.

    >>> plan_blocks(100, 70, (32, 32), (16, 16), 40)
    [(0, 0, 32, 32), (0, 32, 32, 32), (0, 64, 32, 6), (32, 0, 32, 32), (32, 32, 32, 32), (32, 64, 32, 6), \
(64, 0, 32, 32), (64, 32, 32, 32), (64, 64, 32, 6), (96, 0, 4, 32), (96, 32, 4, 32), (96, 64, 4, 6)]
    """
    if block_size is None:
        block_size = (DEFAULT_BLOCK_STRIDES * stride[0], DEFAULT_BLOCK_STRIDES * stride[1])
    elif isinstance(block_size, (int, float)):
        block_size = (block_size, block_size)
    if any(int(b) < 1 for b in block_size):
        raise InvalidOptionError(f"BLOCK_SIZE must be at least 1 pixel; got {tuple(block_size)}.")
    steps = [max(int(b) // int(s), 1) * int(s) for b, s in zip(block_size, stride)]
    return [
        (r, c, min(steps[0], height - r), min(steps[1], width - c))
        for r in range(0, height, steps[0])
        for c in range(0, width, steps[1])
    ]


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to compute one block, minus the block: plain values, cheap to pickle."""

    input_path: str
    card_path: str
    card_sha256: str
    weights_sha256: str
    device: str
    options: dict
    staging: str


@dataclass
class ClusterRunSummary(RunSummary):
    """:class:`RunSummary` of a cluster run, plus how it was cut and run.

    ``n_tiles`` is the grid's tile count (as a local run reports); ``tiles_computed`` counts each tile once per
    block that ran it (halos included); ``n_skipped`` likewise. ``compute_seconds`` is the sum over blocks of
    the time spent inside the engine on the workers (``block_seconds``, by block index; ``block_workers``: who
    computed each block); ``assembly_seconds`` the client's time copying finished blocks into the outputs (it
    overlaps the workers' computing); ``seconds`` the client's wall time.
    """

    n_blocks: int = 0
    n_workers: int = 0
    tiles_computed: int = 0
    compute_seconds: float = 0.0
    block_seconds: list = field(default_factory=list)
    block_workers: list = field(default_factory=list)
    assembly_seconds: float = 0.0


# --- worker side -------------------------------------------------------------------------------------------

_MODELS = {}  # (card path, card sha256, weights sha256, device) -> LoadedModel, one per worker process
_MODELS_LOCK = threading.Lock()
_RUN_LOCK = threading.Lock()  # one block at a time per process: a LoadedModel serves one run at a time


def _worker_name():
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"process {os.getpid()}"


def _worker_model(job):
    """The job's model, loaded once per process; the card and weights are checked by SHA-256 before loading."""
    from .model_card import card_file_hash, load_model_card
    from .model_loading import load_model, resolve_device

    key = (job.card_path, job.card_sha256, job.weights_sha256, job.device)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        card = load_model_card(job.card_path)
        for what, path, expected in (("model card", card.path, job.card_sha256),
                                     ("weights", card.weights_path, job.weights_sha256)):
            found = card_file_hash(path)
            if found != expected:
                raise ClusterError(
                    f"Worker {_worker_name()} sees another {what} at {path} (SHA-256 {found[:12]}…, the client's "
                    f"is {expected[:12]}…). Give every worker the same files, on shared storage at the same path."
                )
        loaded = load_model(card, resolve_device(job.device))
        _MODELS.clear()  # one model per process: a new card or device replaces the previous one
        _MODELS[key] = loaded
        return loaded


def _use_worker_threads():
    """torch's CPU threads = the worker's thread count (blocks of a process run one at a time, each with all of
    them). torch's CPU kernels split some reductions by thread count, so the last bits of the probabilities
    (about 1e-6) depend on it: a block is bit-identical to a local run with as many torch threads."""
    try:
        from distributed import get_worker

        nthreads = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return
    import torch

    if torch.get_num_threads() != nthreads:
        torch.set_num_threads(nthreads)


def _staging_cancelled(staging):
    """A throttled ``is_cancelled`` for a block: true once the client dropped the marker or removed the folder."""
    staging = Path(staging)
    state = {"next": 0.0, "cancelled": False}

    def is_cancelled():
        now = time.monotonic()
        if not state["cancelled"] and now >= state["next"]:
            state["next"] = now + _CANCEL_POLL_S
            state["cancelled"] = (staging / _CANCEL_MARKER).exists() or not staging.is_dir()
        return state["cancelled"]

    return is_cancelled


def _staging_paths(staging, index, outputs):
    """Block ``index``'s staging file for each output kind the run writes."""
    names = {"classes": True, "uncertainty": outputs.get("uncertainty"), "probabilities": outputs.get("probabilities")}
    return {kind: str(Path(staging) / f"block{index:06d}-{kind}.tif") for kind, wanted in names.items() if wanted}


def _run_block(job, index, block):
    """Task body: compute block ``index`` = (row, col, height, width) into the staging folder.

    Returns a small dict (the block's summary and staging paths). Engine errors leave with the block named.
    """
    from .inference import predict_uncertainty

    is_cancelled = _staging_cancelled(job.staging)
    if is_cancelled():
        raise InferenceCancelled("Cancelled by the user.")
    paths = _staging_paths(job.staging, index, job.options["outputs"])
    options = {k: v for k, v in job.options.items() if k != "outputs"}
    failure = None
    try:
        loaded = _worker_model(job)
        with _RUN_LOCK:
            _use_worker_threads()
            started = time.perf_counter()
            summary = predict_uncertainty(
                job.input_path, loaded,
                OutputPaths(paths["classes"], paths.get("uncertainty"), paths.get("probabilities")),
                block=block, is_cancelled=is_cancelled, overviews=False, **options,  # staging: pixels only
            )
            seconds = time.perf_counter() - started
    except InferenceCancelled:
        raise
    except UncertaintyError as e:
        failure = type(e)(f"Block {index} (rows {block[0]}..{block[0] + block[2]}, columns {block[1]}.."
                          f"{block[1] + block[3]}) on worker {_worker_name()}: {e}")
    if failure is not None:
        # Raised outside the handler, without the chained GDAL/torch errors: Dask ships the exception with its
        # causes, and some of those (rasterio's CPLE_* errors) cannot be pickled.
        raise failure
    return {
        "index": index,
        "block": tuple(block),
        "paths": paths,
        "worker": _worker_name(),
        "seconds": seconds,
        "n_tiles": summary.n_tiles,
        "n_skipped": summary.n_skipped,
        "rejected": summary.rejected_pixels,
        "valid": summary.valid_pixels,
        "min": summary.uncertainty_min,
        "mean": summary.uncertainty_mean,
        "max": summary.uncertainty_max,
        "device": summary.device,
        "prefix_cached": summary.prefix_cached,
        "n_samples_per_pixel": summary.n_samples_per_pixel,
    }


# --- client side -------------------------------------------------------------------------------------------


def _check_outputs(input_path, outputs):
    """Refuse before any task: an output that is the input, two outputs with one name, a missing folder."""
    paths = [p for p in (outputs.classes, outputs.uncertainty, outputs.probabilities) if p]
    resolved = [str(Path(p).resolve()) for p in paths]
    if len(set(resolved)) < len(resolved):
        raise OutputWriteError(
            f"Outputs {paths} share a file name. Give each output its own file name."
        )
    if str(Path(input_path).resolve()) in resolved:
        raise OutputWriteError(
            f"An output is the INPUT raster itself ({input_path}). Choose another file name: the input is read "
            "while the outputs are written."
        )
    for p in paths:
        folder = Path(p).parent
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise OutputWriteError(f"Output folder {folder} {what}. Create the folder or choose another path.")
        if not os.access(folder, os.W_OK):
            raise OutputWriteError(f"Output folder {folder} is not writable. Choose a folder you can write to.")


def _remove_staging(staging, timeout=_STAGING_REMOVAL_TIMEOUT_S):
    """Remove the staging folder, again and again while tasks that have not yet seen the cancel still write
    into it (a file created during a removal makes the last ``rmdir`` fail); they stop within one tile."""
    deadline = time.monotonic() + timeout
    while True:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.lexists(staging):
            return
        if time.monotonic() > deadline:
            raise OutputWriteError(
                f"The staging folder {staging} could not be removed within {timeout:.0f} s (a worker still writes "
                "into it). Remove it by hand once the workers are idle."
            )
        time.sleep(0.2)


class _Assembler:
    """The final outputs, created from the first finished block's files and filled block by block."""

    def __init__(self, source, outputs):
        self.source = source
        self.targets = {"classes": outputs.classes, "uncertainty": outputs.uncertainty,
                        "probabilities": outputs.probabilities}
        self.writers = {}

    def add(self, result):
        from rasterio.errors import NotGeoreferencedWarning

        from .raster_io import GeoTiffWriter, open_raster

        row, col, _, _ = result["block"]
        for kind, staged in result["paths"].items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                try:
                    with open_raster(staged, f"Staging file of block {result['index']}") as ds:
                        if kind not in self.writers:
                            tags = {k: v for k, v in ds.tags().items() if k != "AREA_OR_POINT"}
                            self.writers[kind] = GeoTiffWriter(
                                self.targets[kind], self.source, ds.count, ds.dtypes[0], ds.nodata, tags=tags,
                                descriptions=list(ds.descriptions),
                            )
                        data = ds.read()
                except (RasterInputError, OSError) as e:
                    raise OutputWriteError(
                        f"{e} The staging folder must be on storage that the client and every worker see at the "
                        "same path."
                    ) from e
            self.writers[kind].write(data, row, col)
            Path(staged).unlink()

    def commit(self):
        for writer in self.writers.values():
            writer.finish()
        for writer in self.writers.values():
            writer.commit()

    def abort(self):
        for writer in self.writers.values():
            writer.abort()


def _validate_options(card, *, n_samples, mode, tta, stochastic, tile, stride, batch_size):
    """The local run's option checks, on the client, before any task or file."""
    from .constants import MAX_SAMPLES
    from .tiling import check_tiling
    from .tta import tta_views

    look_up_option(mode, UncertaintyMode, "UNCERTAINTY_MODE")
    tta = look_up_option(tta, TTAMode, "TTA_MODE")
    tile = tuple(int(v) for v in (tile or card.tile_shape))
    stride = tuple(int(v) for v in (stride or card.step_shape))
    check_tiling(tile, stride)
    if stochastic and not 1 <= int(n_samples) <= MAX_SAMPLES:
        raise InvalidOptionError(f"N_SAMPLES must be between 1 and {MAX_SAMPLES}; got {n_samples}.")
    if int(batch_size) < 1:
        raise InvalidOptionError(f"BATCH_SIZE must be at least 1; got {batch_size}.")
    tta_views(tta, tile)
    return tile, stride


def predict_uncertainty_distributed(
    client,
    input_path,
    card_path,
    outputs,
    *,
    device="auto",
    n_samples=10,
    mode=UncertaintyMode.ENTROPY,
    tta=TTAMode.NONE,
    stochastic=True,
    tile=None,
    stride=None,
    batch_size=1,
    seed=None,
    block_size=None,
    reject_above=None,
    progress=None,
    is_cancelled=None,
    log=None,
):
    """:func:`engine.inference.predict_uncertainty` over the workers of ``client`` (a ``distributed.Client``).

    Same options and outputs as the local run, except that the model is named by its card (``card_path``) and
    ``device`` (auto, cpu, cuda), each worker loading it itself; ``block_size`` is the block edge in pixels
    (see :func:`plan_blocks`); ``reject_above`` marks uncertain pixels as in the local run (a per-pixel rule,
    so blocks need nothing more). ``input_path``, ``card_path`` and the outputs' folders must be at the same
    path on the client and on every worker. Without ``seed`` one is drawn here, so that every block uses the same.
    The output rasters are identical, pixel for pixel and tag for tag, to the local run with that seed on the
    same kind of device with as many torch threads as each worker has threads (torch's CPU results differ in
    the last bits, about 1e-6, between thread counts).
    Returns a :class:`ClusterRunSummary`; raises :class:`UncertaintyError` subclasses (a block's error names the
    block) and leaves no output or staging file behind on any failure or cancel.
    """
    distributed = _import_distributed()
    from .model_card import card_file_hash, load_model_card
    from .raster_io import BandScaling, RasterSource
    from .tiling import TileGrid

    log = log or (lambda text: None)
    progress = progress or (lambda percent, text: None)
    started = time.perf_counter()
    card = load_model_card(card_path)
    tile, stride = _validate_options(card, n_samples=n_samples, mode=mode, tta=tta, stochastic=stochastic, tile=tile,
                                     stride=stride, batch_size=batch_size)
    seed = int(seed) if seed is not None else secrets.randbits(31)
    input_path = str(Path(input_path).absolute()) if "://" not in str(input_path) else str(input_path)
    _check_outputs(input_path, outputs)
    with RasterSource(input_path, card.bands, BandScaling()) as source:
        grid = TileGrid(source.height, source.width, tile, stride)
        blocks = plan_blocks(source.height, source.width, tile, stride, block_size)
        classes = Path(outputs.classes).absolute()
        staging = classes.parent / f".{classes.stem}.staging-{uuid.uuid4().hex[:12]}"
        job = BlockJob(
            input_path=input_path,
            card_path=str(card.path),
            card_sha256=card_file_hash(card.path),
            weights_sha256=card_file_hash(card.weights_path),
            device=str(device),
            options={
                "n_samples": int(n_samples), "mode": str(look_up_option(mode, UncertaintyMode, "").value),
                "tta": str(look_up_option(tta, TTAMode, "").value), "stochastic": bool(stochastic),
                "tile": tile, "stride": stride, "batch_size": int(batch_size), "seed": seed,
                "reject_above": None if reject_above is None else float(reject_above),
                "outputs": {"uncertainty": bool(outputs.uncertainty), "probabilities": bool(outputs.probabilities)},
            },
            staging=str(staging),
        )
        n_workers = len(client.scheduler_info().get("workers", {}))
        log(f"Dask cluster at {client.scheduler.address}: {n_workers} worker(s); {len(blocks)} block(s) on a "
            f"{source.width}×{source.height} raster, {grid.n_tiles} tiles of {tile[0]}×{tile[1]} px, stride "
            f"{stride[0]}×{stride[1]}; seed {seed}; staging in {staging}.")
        run_id = staging.name.rsplit("-", 1)[-1]
        assembler = _Assembler(source, outputs)
        try:
            staging.mkdir()
        except OSError as e:
            raise OutputWriteError(f"Cannot create the staging folder {staging} ({e}). Check the output folder.") from e
        futures = []
        results = []
        try:
            futures = [
                client.submit(_run_block, job, i, b, key=f"seg-uncertainty-{run_id}-block-{i}", pure=False)
                for i, b in enumerate(blocks)
            ]
            finishing = distributed.as_completed(futures, loop=client.loop)
            total_px = float(source.height * source.width)
            done_px = 0
            assembly_seconds = 0.0
            while len(results) < len(blocks):
                if is_cancelled is not None and is_cancelled():
                    raise InferenceCancelled("Cancelled by the user.")
                if not finishing.has_ready():
                    time.sleep(_CLIENT_POLL_S)
                    continue
                for future in finishing.next_batch(block=False):
                    result = _block_result(future)
                    copy_started = time.perf_counter()
                    assembler.add(result)
                    assembly_seconds += time.perf_counter() - copy_started
                    results.append(result)
                    done_px += result["block"][2] * result["block"][3]
                    progress(100.0 * done_px / total_px,
                             f"Block {len(results)}/{len(blocks)} done (block {result['index']} on "
                             f"{result['worker']}, {result['seconds']:.1f} s)")
            assembler.commit()
        except BaseException:
            _cancel(client, futures, staging)
            assembler.abort()
            _remove_staging(staging)
            raise
        _remove_staging(staging)

    valid = sum(r["valid"] for r in results)
    means = [(r["mean"], r["valid"]) for r in results if r["valid"]]
    return ClusterRunSummary(
        device=",".join(sorted({r["device"] for r in results})),
        n_tiles=grid.n_tiles,
        n_skipped=sum(r["n_skipped"] for r in results),
        n_samples_per_pixel=results[0]["n_samples_per_pixel"] if results else 0,
        seed=seed,
        seconds=time.perf_counter() - started,
        megapixels=source.height * source.width / 1e6,
        prefix_cached=all(r["prefix_cached"] for r in results),
        uncertainty_min=min((r["min"] for r in results if r["valid"]), default=float("nan")),
        uncertainty_mean=(sum(m * n for m, n in means) / valid) if valid else float("nan"),
        uncertainty_max=max((r["max"] for r in results if r["valid"]), default=float("nan")),
        valid_pixels=valid,
        rejected_pixels=sum(r["rejected"] for r in results),
        outputs={k: str(w.path) for k, w in assembler.writers.items()},
        n_blocks=len(blocks),
        n_workers=n_workers,
        tiles_computed=sum(r["n_tiles"] for r in results),
        compute_seconds=sum(r["seconds"] for r in results),
        block_seconds=[r["seconds"] for r in sorted(results, key=lambda r: r["index"])],
        block_workers=[r["worker"] for r in sorted(results, key=lambda r: r["index"])],
        assembly_seconds=assembly_seconds,
    )


def _block_result(future):
    """The block's result; its error as the engine error it was (block named), anything else as ClusterError."""
    try:
        return future.result()
    except UncertaintyError:
        raise
    except Exception as e:  # noqa: BLE001 - KilledWorker, a worker without the plugin, ...
        name = type(e).__name__
        if name == "KilledWorker":
            raise ClusterError(
                f"A block killed every worker that tried it ({e}); the workers probably run out of memory. Lower "
                "the block size, TILE_SIZE or BATCH_SIZE, or give the workers more memory."
            ) from e
        if isinstance(e, ImportError):
            raise ClusterError(
                f"A worker cannot import the plugin ({e}). Start every worker with the plugins folder on its "
                "PYTHONPATH (e.g. PYTHONPATH=~/.local/share/QGIS/QGIS3/profiles/default/python/plugins) and the "
                "plugin's requirements installed."
            ) from e
        raise ClusterError(f"A block failed on the cluster: {name}: {e}") from e


def _cancel(client, futures, staging):
    """Stop every task of the run: the marker stops running ones within a tile, ``cancel`` drops pending ones."""
    with contextlib.suppress(OSError):  # a staging folder already gone needs no marker
        (Path(staging) / _CANCEL_MARKER).touch()
    if futures:
        with contextlib.suppress(Exception):  # a cluster that went away has nothing left to cancel
            client.cancel(futures)
