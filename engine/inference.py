"""Tiled, streaming segmentation with uncertainty over a whole raster: a short driver over named stages.

(~400 lines: the public entry point's options, tags and summary, plus the block run; no tile geometry; what a run
decides beyond the statistics (rejection, sample bands) lives in :mod:`engine.run_decisions`.)

:func:`predict_uncertainty` checks the options, opens the raster, plans the block on the global grid
(:func:`engine.tiling.plan_block`), readies the sampler and the writers, and hands them to a :class:`_BlockRun`,
whose loop is: for each planned strip, read it once (:class:`engine.raster_io.RasterSource`), skip tiles that are
wholly NoData, turn the others into moments (:class:`engine.samplers.UncertaintySampler`), fold them into the
:class:`engine.merging.StripMerger` with a Gaussian window, then finalise and write every row of the block no
later tile can reach. Peak memory is one strip (tile height × block width plus a halo) of input, moments and
outputs, whatever the raster's height; and the block runs in column panels (:mod:`engine.panels`), each a block
plan of its own, so that the width that counts is a panel's, not the raster's.

Rasters smaller than a tile are padded by reflection up to the tile and cropped back. Pixels invalid in the
input (NoData, mask, alpha, non-finite) are NoData in every output.

A :class:`~engine.model_loading.LoadedModel` holds one model whose dropout layers are switched on for the run:
one loaded model serves one run at a time (load it again for a concurrent run).
"""

import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .allocator import release_free_memory
from .constants import CLASS_NODATA, ENGINE_VERSION, MAX_SAMPLES
from .errors import InvalidOptionError, TileInferenceError, UncertaintyError, is_out_of_memory
from .hooks import RunHooks
from .options import TTAMode, UncertaintyMode, look_up_option
from .raster_io import BandScaling, GeoTiffWriter, OutputLayout, RasterSource, gdal_cache_limit
from .run_decisions import RunDecisions
from .sample_bands import SampleBands
from .statistics import uncertainty_from_moments
from .tiling import TileGrid, check_block, check_tiling, gaussian_window, pad_to, plan_block

__all__ = ["OutputPaths", "RunSummary", "SampleBands", "predict_uncertainty", "CLASS_NODATA", "MAX_SAMPLES"]

# MC samples per tail call, (CPU, CUDA): on CPU small chunks stay in cache and run faster than big ones.
DEFAULT_SAMPLE_CHUNK = (4, 16)
# TTA views per model call, (CPU, CUDA; None = all): on CPU one view at a time was faster (d4 on a 512-px FPN
# tile: 2.6-3.3 s against 4.3-4.6 s for all 8 at once) and holds one view's activations instead of eight.
DEFAULT_VIEW_CHUNK = (1, None)


@dataclass
class OutputPaths:
    """Where to write: the class raster (required), uncertainty and mean probabilities (optional)."""

    classes: str
    uncertainty: Optional[str] = None
    probabilities: Optional[str] = None
    samples: Optional[str] = None  # K sample bands (see SampleBands); needs ``samples=`` of predict_uncertainty


@dataclass
class RunSummary:
    device: str
    n_tiles: int
    n_skipped: int
    n_samples_per_pixel: int
    seed: int
    seconds: float
    megapixels: float
    prefix_cached: bool
    uncertainty_min: float = float("nan")
    uncertainty_mean: float = float("nan")
    uncertainty_max: float = float("nan")
    valid_pixels: int = 0
    rejected_pixels: int = 0
    temperature: float = 1.0
    sample_indices: tuple = ()
    outputs: dict = field(default_factory=dict)


class _RunningRange:
    """min, mean, max of the uncertainty over valid pixels, streamed (float64 sum)."""

    def __init__(self):
        self.n, self.total, self.lo, self.hi = 0, 0.0, np.inf, -np.inf

    def update(self, values):
        if values.size:
            self.n += values.size
            self.total += float(values.sum(dtype=np.float64))
            self.lo = min(self.lo, float(values.min()))
            self.hi = max(self.hi, float(values.max()))

    def result(self):
        if not self.n:
            return float("nan"), float("nan"), float("nan")
        return self.lo, self.total / self.n, self.hi


def _validate(n_samples, batch_size):
    if not 1 <= int(n_samples) <= MAX_SAMPLES:
        raise InvalidOptionError(f"N_SAMPLES must be between 1 and {MAX_SAMPLES}; got {n_samples}.")
    if int(batch_size) < 1:
        raise InvalidOptionError(f"BATCH_SIZE must be at least 1; got {batch_size}.")


def predict_uncertainty(
    input_path: str,
    loaded,
    outputs: OutputPaths,
    *,
    n_samples: int = 10,
    mode: Union[UncertaintyMode, str] = UncertaintyMode.ENTROPY,
    tta: Union[TTAMode, str] = TTAMode.NONE,
    stochastic: bool = True,
    tile: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
    batch_size: int = 1,
    seed: Optional[int] = None,
    sample_chunk: Optional[int] = None,
    prefix_cache: bool = True,
    block: Optional[Sequence[int]] = None,
    extent: Optional[Sequence[float]] = None,
    mask: Optional[Sequence[dict]] = None,
    panel_memory_mb: Optional[float] = None,
    panel_width: Optional[int] = None,
    precision: str = "float32",
    overviews: bool = True,
    cog: bool = False,
    progress: Optional[Callable[[float, str], None]] = None,
    is_cancelled: Optional[Callable[[], bool]] = None,
    log: Optional[Callable[[str], None]] = None,
    reject_above: Optional[float] = None,
    samples: Optional[SampleBands] = None,
) -> RunSummary:
    """Run ``loaded`` (a :class:`engine.model_loading.LoadedModel`) over ``input_path``; write ``outputs``.

    The card's ``calibration.temperature`` T divides every sample's logits (:mod:`engine.samplers`);
    ``reject_above`` marks pixels whose uncertainty exceeds it with the class value C ("uncertain");
    ``samples`` (:class:`~engine.sample_bands.SampleBands`) writes K of the samples to ``outputs.samples``
    (:mod:`engine.run_decisions`).

    ``stochastic=True`` is MC Dropout with ``n_samples`` passes per view; ``False`` runs the model in eval
    mode once per view (TTA alone). ``tile``/``stride`` default to the card's (h, w). Without ``seed`` one is
    drawn and recorded in the output tags, so every run can be repeated. ``progress(percent, text)``,
    ``is_cancelled()`` and ``log(text)`` are optional callables. Returns a :class:`RunSummary`.

    ``block=(row, col, height, width)`` computes only that rectangle of the outputs (files of the block's size
    and georeferencing), from the tiles of the raster's global grid that touch it (a halo of up to one tile is
    read): the pixels equal those of the whole-raster run, which is how one huge raster can be split over
    several processes or machines.

    ``extent=(xmin, ymin, xmax, ymax)`` in the raster's CRS is the block of every pixel it touches (snapped
    outward to the pixel grid, :func:`engine.aoi.block_for_extent`); ``mask``: GeoJSON-like polygons in the
    raster's CRS, outside which outputs are NoData and tiles do not run (the block defaults to their bounds).
    The block runs in column panels of at most ``panel_width`` columns (by default as wide as
    ``panel_memory_mb`` MiB of buffers allow, :mod:`engine.panels`): peak memory does not grow with the
    raster, and the pixels do not depend on the panels. ``precision``: the model's arithmetic
    (:mod:`engine.precision`). ``overviews``: internal overviews in every output; ``cog``: Cloud Optimized
    GeoTIFFs instead.
    Raises :class:`UncertaintyError` subclasses; on any failure or cancel no output file is left behind.
    """
    import torch

    from .aoi import PolygonMask
    from .dropout import set_dropout_active
    from .panels import panel_blocks, panel_blocks_for_reads, read_width_for_memory
    from .precision import check_precision
    from .prefix_cache import PlainForward, mc_forward_for
    from .samplers import UncertaintySampler
    from .tta import tta_views

    hooks = RunHooks(progress, is_cancelled, log)
    mode = look_up_option(mode, UncertaintyMode, "UNCERTAINTY_MODE")
    tta = look_up_option(tta, TTAMode, "TTA_MODE")
    card = loaded.card
    tile = tuple(int(v) for v in (tile or card.tile_shape))
    stride = tuple(int(v) for v in (stride or card.step_shape))
    check_tiling(tile, stride)
    n_samples = int(n_samples) if stochastic else 1
    _validate(n_samples, batch_size)
    views = tta_views(tta, tile)
    seed = int(seed) if seed is not None else secrets.randbits(31)
    device = torch.device(loaded.device or "cpu")
    on_cuda = device.type == "cuda"
    precision = check_precision(precision, device)
    started = time.perf_counter()
    decisions = RunDecisions(loaded.n_classes, card.class_names, reject_above=reject_above, samples=samples,
                             samples_path=outputs.samples, n_total_samples=len(views) * n_samples)

    scaling = BandScaling(card.scale, card.mean, card.std, card.nodata_fill)
    with gdal_cache_limit(), RasterSource(input_path, card.bands, scaling) as source:
        grid = TileGrid(source.height, source.width, tile, stride)
        aoi = PolygonMask(mask, source.dataset.transform) if mask is not None else None
        block = _resolve_block(block, extent, aoi, source)
        model = loaded.model
        set_dropout_active(model, stochastic)
        with torch.inference_mode():
            if stochastic and prefix_cache:
                forward = mc_forward_for(loaded, tile, device, log=hooks.log)
            else:
                forward = PlainForward(model)
        cached = bool(getattr(forward, "cached", False))
        sampler = UncertaintySampler(
            forward, loaded.n_classes, views, n_samples, seed, device,
            sample_chunk or DEFAULT_SAMPLE_CHUNK[on_cuda], view_chunk=DEFAULT_VIEW_CHUNK[on_cuda],
            squares=mode is UncertaintyMode.VARIANCE, entropies=mode is UncertaintyMode.MUTUAL_INFORMATION,
            stochastic=stochastic, precision=precision, temperature=card.temperature,
            kept_samples=decisions.sample_indices, kept_class=decisions.kept_class,
        )
        if panel_width is None:  # as wide as the memory budget lets each panel read
            max_read = read_width_for_memory(panel_memory_mb, grid.read_shape, stride, len(card.bands),
                                             sampler.n_channels, loaded.n_classes)
            panels = panel_blocks_for_reads(block, grid.col_starts, grid.read_shape[1], max_read)
        else:
            panels = panel_blocks(block, panel_width)
        plans = [plan_block(grid, panel) for panel in panels]
        hooks.log(
            f"Device: {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads); "
            f"{grid.n_tiles} tiles of {tile[0]}×{tile[1]} px, stride {stride[0]}×{stride[1]}, on a "
            f"{source.width}×{source.height} raster; {len(views)} view(s) × {n_samples} sample(s) per tile; "
            f"deterministic prefix cached: {'yes' if cached else 'no'}; seed {seed}."
        )
        tags = {
            "SEG_UNCERTAINTY_VERSION": ENGINE_VERSION,
            "MODEL_CARD": str(card.path),
            "MODEL_SHA256": loaded.weights_sha256,
            "MC_SAMPLES": n_samples,
            "MC_DROPOUT": "yes" if stochastic else "no",
            "TTA_MODE": tta.value,
            "UNCERTAINTY_MODE": mode.value,
            "SEED": seed,
            "TILE_SIZE": f"{tile[0]}x{tile[1]}",
            "STRIDE": f"{stride[0]}x{stride[1]}",
            "CLASS_NAMES": ",".join(decisions.class_names),
            "CALIBRATION_TEMPERATURE": repr(float(card.temperature)),
            **decisions.tags(),
        }
        writers = _Writers()
        try:
            writers.open(outputs, source, block=block, tags=tags, n_classes=loaded.n_classes,
                         class_names=card.class_names, mode=mode, decisions=decisions,
                         layout=OutputLayout(overviews=overviews, cog=cog))
            run = _BlockRun(plans, source, sampler, writers, hooks, mode=mode, batch_size=int(batch_size), aoi=aoi,
                            out_block=block, decisions=decisions)
            run.run()
            writers.commit()
        except BaseException as e:
            writers.abort()
            if isinstance(e, (UncertaintyError, KeyboardInterrupt)):
                raise
            if is_out_of_memory(e):
                raise UncertaintyError(
                    f"Out of memory on {device} ({e}). Lower TILE_SIZE, BATCH_SIZE or N_SAMPLES."
                ) from e
            raise
        finally:
            set_dropout_active(model, False)
    lo, mean, hi = run.stats.result()
    return RunSummary(
        device=str(device),
        n_tiles=run.n_tiles,
        n_skipped=run.n_skipped,
        n_samples_per_pixel=sampler.samples_per_pixel,
        seed=seed,
        seconds=time.perf_counter() - started,
        megapixels=block[2] * block[3] / 1e6,
        prefix_cached=cached,
        uncertainty_min=lo,
        uncertainty_mean=mean,
        uncertainty_max=hi,
        valid_pixels=run.n_valid,
        rejected_pixels=decisions.rejected,
        temperature=card.temperature,
        sample_indices=decisions.sample_indices,
        outputs=writers.paths(),
    )


def _resolve_block(block, extent, aoi, source):
    """The output block: ``block``, or the pixels ``extent`` touches, or the polygons' bounds; whole raster."""
    from .aoi import block_for_extent

    if extent is not None and block is not None:
        raise InvalidOptionError("Give either block or extent, not both.")
    if extent is None and block is None and aoi is not None:
        extent = aoi.bounds
    if extent is not None:
        block = block_for_extent(extent, source.dataset.transform, source.height, source.width)
    return check_block(block, source.height, source.width)


class _Writers:
    """The run's output GeoTIFFs by name (classes, uncertainty, probabilities); all committed or none."""

    def __init__(self):
        self.by_name = {}

    def open(self, outputs, source, *, block, tags, n_classes, class_names, mode, decisions, layout=None):
        self.by_name["classes"] = GeoTiffWriter(
            outputs.classes, source, 1, "uint8", CLASS_NODATA, tags=tags, descriptions=["class"], block=block,
            layout=layout,
        )
        if outputs.uncertainty:
            self.by_name["uncertainty"] = GeoTiffWriter(
                outputs.uncertainty, source, 1, "float32", float("nan"), tags=tags, descriptions=[mode.value],
                block=block, layout=layout,
            )
        if outputs.probabilities:
            self.by_name["probabilities"] = GeoTiffWriter(
                outputs.probabilities, source, n_classes, "float32", float("nan"), tags=tags,
                descriptions=[f"p({name})" for name in class_names], block=block, layout=layout,
            )
        if decisions.samples is not None:
            self.by_name["samples"] = GeoTiffWriter(
                outputs.samples, source, len(decisions.sample_indices), decisions.sample_dtype,
                decisions.sample_nodata, tags=tags, descriptions=decisions.sample_descriptions(), block=block,
                layout=layout,
            )

    def write(self, name, array, row, col=0):
        if name in self.by_name:
            self.by_name[name].write(array, row, col)

    def __contains__(self, name):
        return name in self.by_name

    def commit(self):
        """Finish every file (flush, check, overviews), side by side: the model is done and the cores are free,
        and each file is its own GDAL dataset; then rename them, only once all are complete."""
        from concurrent.futures import ThreadPoolExecutor

        writers = list(self.by_name.values())
        with ThreadPoolExecutor(max(1, len(writers)), thread_name_prefix="seg-uncertainty-finish") as pool:
            done = [pool.submit(writer.finish) for writer in writers]
        for future in done:
            future.result()  # the first failure is raised, after every finish has ended
        for writer in writers:
            writer.commit()

    def abort(self):
        for writer in self.by_name.values():
            writer.abort()

    def paths(self):
        return {name: str(writer.path) for name, writer in self.by_name.items()}


class _BlockRun:
    """A block's column panels (one :class:`~engine.tiling.BlockPlan` each, left to right) through the sampler
    into the writers; holds what the stages share.

    One background thread reads the next strip and another finalises and writes finished rows while the model
    runs (GDAL and numpy release the GIL), each on its own dataset, in order; at most two finished strips wait
    for the writer, so memory stays one panel's. ``aoi`` (a :class:`engine.aoi.PolygonMask`) masks the outputs
    and the tiles to run, never the model's input.
    """

    def __init__(self, plans, source, sampler, writers: _Writers, hooks: RunHooks, *, mode, batch_size, out_block,
                 decisions, aoi=None):
        self.plans, self.source, self.sampler, self.writers, self.hooks = plans, source, sampler, writers, hooks
        self.mode, self.batch_size, self.out_block, self.aoi = mode, batch_size, out_block, aoi
        self.decisions = decisions
        self.n_classes = sampler.n_classes
        read_h, read_w = plans[0].read_shape
        self.tile_window = gaussian_window(plans[0].grid.tile)[:read_h, :read_w]
        self.n_tiles = sum(plan.n_tiles for plan in plans)
        self.stats = _RunningRange()
        self.n_done = self.n_skipped = self.n_valid = 0
        self.panel_text = ""

    def _read(self, plan, strip):
        data, valid = self.source.read(strip.row, plan.col_lo, plan.read_shape[0], plan.read_width)
        if self.aoi is not None:  # outputs only inside the polygons; the model still sees the pixels around them
            valid &= self.aoi.window_mask(strip.row, plan.col_lo, valid.shape[0], valid.shape[1])
        return data, valid

    def run(self):
        from concurrent.futures import ThreadPoolExecutor

        reader = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-read")
        writer = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-write")
        writes = []
        try:
            for number, plan in enumerate(self.plans):
                self.panel_text = f"panel {number + 1}/{len(self.plans)}, " if len(self.plans) > 1 else ""
                self._run_panel(plan, reader, writer, writes)
                # The panel's last rows are written before the next panel allocates its buffers (two panels'
                # buffers at once made peaks 100 MB above a single panel's), then free heap pages go back to
                # the system: memory must not grow with the raster's width.
                while writes:
                    writes.pop(0).result()
                release_free_memory()
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)

    def _run_panel(self, plan, reader, writer, writes):
        from .merging import StripMerger

        strips = plan.strips
        merger = StripMerger(plan.read_width, self.sampler.n_channels, plan.read_shape[0], top=plan.top)
        next_strip = reader.submit(self._read, plan, strips[0])
        for strip in strips:
            self.hooks.check_cancel()
            data, valid = next_strip.result()
            if strip.number + 1 < len(strips):
                next_strip = reader.submit(self._read, plan, strips[strip.number + 1])
            self._predict_strip(plan, merger, strip, data, valid)
            means, weight = merger.take_rows(strip.final_stop)
            if strip.write is None:
                continue
            rs, cs = plan.block_rows(strip), plan.block_columns()
            valid = valid[rs, cs] & (weight[rs, cs] > 0)
            self.n_valid += int(valid.sum())
            writes.append(writer.submit(self._write_rows, means[:, rs, cs], valid,
                                        strip.write[0] - self.out_block[0], plan.block[1] - self.out_block[1]))
            while writes and (writes[0].done() or len(writes) > 2):  # at most 2 finished strips in flight
                writes.pop(0).result()  # raises a write error here, not at the end

    def _predict_strip(self, plan, merger, strip, data, valid):
        """Predict the tiles of ``strip`` (skipping those with no valid pixel) and fold them into ``merger``."""
        import torch

        read_h, read_w = plan.read_shape
        pending = [(j, col) for j, col in plan.cols if valid[:, plan.tile_columns(col)].any()]
        self.n_skipped += len(plan.cols) - len(pending)
        self.n_done += len(plan.cols) - len(pending)
        for b0 in range(0, len(pending), self.batch_size):
            self.hooks.check_cancel()
            batch = pending[b0 : b0 + self.batch_size]
            tiles = np.stack([pad_to(data[:, :, plan.tile_columns(col)], plan.grid.tile) for _, col in batch])
            x = torch.from_numpy(tiles).to(self.sampler.device, non_blocking=True)
            moments = self._moments(strip, batch, x)[:, :, :read_h, :read_w].cpu().numpy()
            for (_, col), m in zip(batch, moments):
                merger.add(strip.row, col - plan.col_lo, m, self.tile_window)
            self.n_done += len(batch)
            self.hooks.advance(
                self.n_done, self.n_tiles,
                f"Tile {self.n_done}/{self.n_tiles} ({self.panel_text}tile row {strip.number + 1}/{len(plan.strips)})",
            )

    def _moments(self, strip, batch, x):
        import torch

        try:
            with torch.inference_mode():
                return self.sampler.moments(x, [(strip.index, j) for j, _ in batch], self.hooks.cancelled)
        except UncertaintyError:
            raise
        except Exception as e:  # noqa: BLE001 - any model failure is reported with its tile
            if is_out_of_memory(e):
                raise
            raise TileInferenceError(
                f"The model failed on tile row {strip.index}, column {batch[0][0]} (pixels from row {strip.row}, "
                f"column {batch[0][1]}): {type(e).__name__}: {e}"
            ) from e

    def _write_rows(self, means, valid, row, col):
        """Finalise merged moments of output rows from ``row``, columns from ``col``, into classes,
        probabilities and uncertainty."""
        moments = means[: self.sampler.n_moment_channels]  # kept sample channels follow (engine.samplers)
        classes, mean_p, unc = uncertainty_from_moments(moments, self.n_classes, self.mode,
                                                        self.sampler.samples_per_pixel)
        invalid = ~valid
        class_map = self.decisions.classify(classes, unc, valid)
        self.writers.write("classes", class_map[None], row, col)
        self.stats.update(unc[valid])
        if "uncertainty" in self.writers:
            unc[invalid] = np.nan
            self.writers.write("uncertainty", unc[None], row, col)
        if "probabilities" in self.writers:
            mean_p[:, invalid] = np.nan
            self.writers.write("probabilities", mean_p, row, col)
        if "samples" in self.writers:
            extra = means[self.sampler.n_moment_channels:]  # the kept samples after the mode's moments
            self.writers.write("samples", self.decisions.sample_bands(extra, invalid), row, col)
