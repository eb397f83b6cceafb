"""Tiled, streaming segmentation with uncertainty over a whole raster.

The raster is walked one tile row at a time on the global grid of :class:`engine.tiling.TileGrid`. For each
tile row: read the strip once, skip tiles that are wholly NoData, turn the others into moments with the
:class:`engine.samplers.UncertaintySampler`, fold them into the :class:`engine.merging.StripMerger` with a
Gaussian window, then finalise and write every row no later tile can reach. Peak memory is one strip (tile
height × width) of input, moments and outputs, whatever the raster's height.

Rasters smaller than a tile are padded by reflection up to the tile and cropped back. Pixels invalid in the
input (NoData, mask, alpha, non-finite) are NoData in every output.
"""

import secrets
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import InferenceCancelled, InvalidOptionError, TileInferenceError, UncertaintyError
from .abstention import UNCERTAIN_NAME, reject_uncertain, uncertain_class_value
from .options import TTAMode, UncertaintyMode, look_up_option
from .raster_io import BandScaling, GeoTiffWriter, RasterSource
from .statistics import n_moment_channels, uncertainty_from_moments
from .tiling import TileGrid, check_tiling, gaussian_window

__all__ = ["OutputPaths", "RunSummary", "SampleBands", "predict_uncertainty", "CLASS_NODATA", "MAX_SAMPLES"]

CLASS_NODATA = 255
MAX_SAMPLES = 1000
# MC samples per tail call, (CPU, CUDA): on CPU small chunks stay in cache and run faster than big ones.
DEFAULT_SAMPLE_CHUNK = (4, 16)
# TTA views per model call, (CPU, CUDA; None = all): on CPU one view at a time was faster (d4 on a 512-px FPN
# tile: 2.6-3.3 s against 4.3-4.6 s for all 8 at once) and holds one view's activations instead of eight.
DEFAULT_VIEW_CHUNK = (1, None)
ENGINE_VERSION = "0.1.0"


@dataclass
class OutputPaths:
    """Where to write: the class raster (required), uncertainty and mean probabilities (optional)."""

    classes: str
    uncertainty: Optional[str] = None
    probabilities: Optional[str] = None
    samples: Optional[str] = None  # K sample bands (see SampleBands); needs ``samples=`` of predict_uncertainty


@dataclass
class SampleBands:
    """``OUTPUT_SAMPLES``: ``count`` of the V × T samples, evenly spaced (:mod:`engine.sample_bands`), as bands of
    the arg-max class (``content="class"``, uint8, NoData 255) or of p_s(``class_index``) (``"probability"``)."""

    count: int
    content: str = "class"
    class_index: Optional[int] = None


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


def _pad_to(array, shape):
    """Reflect-pad the last two axes of ``array`` up to ``shape`` (edge-pad a 1-pixel axis)."""
    ph, pw = shape[0] - array.shape[-2], shape[1] - array.shape[-1]
    if ph <= 0 and pw <= 0:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(ph, 0)), (0, max(pw, 0))]
    mode = "reflect" if min(array.shape[-2:]) > 1 else "edge"
    return np.pad(array, pad, mode=mode)


def _verification_input(model, n_bands, tile, device):
    """A zero input for the one-off cached-vs-plain check: 64×64 when the model accepts it (the check then
    costs about 1/64 of a tile pass), else the full tile."""
    import torch

    from .fx_guard import model_calls

    small = torch.zeros((1, n_bands, min(tile[0], 64), min(tile[1], 64)), device=device)
    try:
        with model_calls():
            model(small)
        return small
    except Exception:  # noqa: BLE001 - a model that needs its tile size is checked at that size
        return torch.zeros((1, n_bands) + tuple(tile), device=device)


def _check_block(block, source):
    """(row, col, height, width) of the block to compute: the whole raster by default."""
    if block is None:
        return 0, 0, source.height, source.width
    row, col, height, width = (int(v) for v in block)
    if row < 0 or col < 0 or height < 1 or width < 1 or row + height > source.height or col + width > source.width:
        raise InvalidOptionError(
            f"block {tuple(block)} (row, col, height, width) must lie inside the {source.height}×{source.width} "
            "raster."
        )
    return row, col, height, width


def _validate(n_samples, batch_size):
    if not 1 <= int(n_samples) <= MAX_SAMPLES:
        raise InvalidOptionError(f"N_SAMPLES must be between 1 and {MAX_SAMPLES}; got {n_samples}.")
    if int(batch_size) < 1:
        raise InvalidOptionError(f"BATCH_SIZE must be at least 1; got {batch_size}.")


def predict_uncertainty(
    input_path,
    loaded,
    outputs,
    *,
    n_samples=10,
    mode=UncertaintyMode.ENTROPY,
    tta=TTAMode.NONE,
    stochastic=True,
    tile=None,
    stride=None,
    batch_size=1,
    seed=None,
    sample_chunk=None,
    prefix_cache=True,
    block=None,
    progress=None,
    is_cancelled=None,
    log=None,
    reject_above=None,
    samples=None,
):
    """Run ``loaded`` (a :class:`engine.model_loading.LoadedModel`) over ``input_path``; write ``outputs``.

    ``stochastic=True`` is MC Dropout with ``n_samples`` passes per view; ``False`` runs the model in eval
    mode once per view (TTA alone). ``tile``/``stride`` default to the card's (h, w). Without ``seed`` one is
    drawn and recorded in the output tags, so every run can be repeated. ``progress(percent, text)``,
    ``is_cancelled()`` and ``log(text)`` are optional callables. Returns a :class:`RunSummary`.

    ``block=(row, col, height, width)`` computes only that rectangle of the outputs (files of the block's size
    and georeferencing), from the tiles of the raster's global grid that touch it (a halo of up to one tile is
    read): the pixels equal those of the whole-raster run, which is how one huge raster can be split over
    several processes or machines.
    Raises :class:`UncertaintyError` subclasses; on any failure or cancel no output file is left behind.
    """
    import torch

    from .dropout import set_dropout_active
    from .prefix_cache import PlainForward, build_mc_forward
    from .samplers import UncertaintySampler
    from .tta import tta_views

    log = log or (lambda text: None)
    progress = progress or (lambda percent, text: None)
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
    n_classes = loaded.n_classes  # probability channels: 2 for a sigmoid model
    started = time.perf_counter()
    decisions = _Decisions(n_classes, card, reject_above, samples, outputs, len(views) * n_samples)

    scaling = BandScaling(card.scale, card.mean, card.std, card.nodata_fill)
    with RasterSource(input_path, card.bands, scaling) as source:
        grid = TileGrid(source.height, source.width, tile, stride)
        block = _check_block(block, source)
        window = gaussian_window(tile)
        model = loaded.model
        set_dropout_active(model, stochastic)
        with torch.inference_mode():
            if stochastic and prefix_cache:
                forward = build_mc_forward(model, _verification_input(model, len(card.bands), tile, device), log=log)
            else:
                forward = PlainForward(model)
        if sample_chunk is None:
            sample_chunk = DEFAULT_SAMPLE_CHUNK[device.type == "cuda"]
        sampler = UncertaintySampler(
            forward, n_classes, views, n_samples, seed, device, sample_chunk, DEFAULT_VIEW_CHUNK[device.type == "cuda"],
            squares=mode is UncertaintyMode.VARIANCE, entropies=mode is UncertaintyMode.MUTUAL_INFORMATION,
            temperature=card.temperature, kept_samples=decisions.sample_indices, kept_class=decisions.kept_class,
        )
        log(
            f"Device: {device} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads); "
            f"{grid.n_tiles} tiles of {tile[0]}×{tile[1]} px, stride {stride[0]}×{stride[1]}, on a "
            f"{source.width}×{source.height} raster; {len(views)} view(s) × {n_samples} sample(s) per tile; "
            f"deterministic prefix cached: {'yes' if getattr(forward, 'cached', False) else 'no'}; seed {seed}."
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
        }
        tags.update(decisions.tags())
        writers = {}
        try:
            writers["classes"] = GeoTiffWriter(
                outputs.classes, source, 1, "uint8", CLASS_NODATA, tags, ["class"], block
            )
            if outputs.uncertainty:
                writers["uncertainty"] = GeoTiffWriter(
                    outputs.uncertainty, source, 1, "float32", float("nan"), tags, [mode.value], block
                )
            if outputs.probabilities:
                writers["probabilities"] = GeoTiffWriter(
                    outputs.probabilities, source, n_classes, "float32", float("nan"), tags,
                    [f"p({name})" for name in card.class_names], block,
                )
            if decisions.samples is not None:
                writers["samples"] = GeoTiffWriter(
                    outputs.samples, source, len(decisions.sample_indices), decisions.sample_dtype,
                    decisions.sample_nodata, tags, decisions.sample_descriptions(), block,
                )
            summary_range, n_skipped, valid_pixels, n_tiles = _run_tiles(
                source, grid, block, window, sampler, writers, decisions, mode, batch_size, device, progress,
                is_cancelled,
            )
            for writer in writers.values():
                writer.finish()  # every file complete before any replaces an older one of its name
            for writer in writers.values():
                writer.commit()
        except BaseException as e:
            for writer in writers.values():
                writer.abort()
            if isinstance(e, (UncertaintyError, KeyboardInterrupt)):
                raise
            if isinstance(e, MemoryError) or "out of memory" in str(e).lower():
                raise UncertaintyError(
                    f"Out of memory on {device} ({e}). Lower TILE_SIZE, BATCH_SIZE or N_SAMPLES."
                ) from e
            raise
        finally:
            set_dropout_active(model, False)
    lo, mean, hi = summary_range.result()
    seconds = time.perf_counter() - started
    return RunSummary(
        device=str(device),
        n_tiles=n_tiles,
        n_skipped=n_skipped,
        n_samples_per_pixel=len(views) * n_samples,
        seed=seed,
        seconds=seconds,
        megapixels=block[2] * block[3] / 1e6,
        prefix_cached=bool(getattr(forward, "cached", False)),
        uncertainty_min=lo,
        uncertainty_mean=mean,
        uncertainty_max=hi,
        valid_pixels=valid_pixels,
        rejected_pixels=decisions.rejected,
        temperature=card.temperature,
        sample_indices=tuple(int(i) for i in decisions.sample_indices),
        outputs={k: str(w.path) for k, w in writers.items()},
    )


def _run_tiles(source, grid, block, window, sampler, writers, decisions, mode, batch_size, device, progress,
               is_cancelled):
    """The tile loop over the tiles of the global grid that touch ``block`` (row, col, height, width).

    One background thread reads the next strip and another finalises and writes finished rows while the model
    runs (GDAL and numpy release the GIL), each on its own dataset, in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .merging import StripMerger

    b_row, b_col, b_height, b_width = block
    read_h, read_w = grid.read_shape
    rows = grid.row_starts
    needed_rows = [i for i, r in enumerate(rows) if r < b_row + b_height and r + read_h > b_row]
    cols = [(j, c) for j, c in enumerate(grid.col_starts) if c < b_col + b_width and c + read_w > b_col]
    c_lo, c_hi = cols[0][1], cols[-1][1] + read_w
    n_classes = decisions.n_classes
    n_tiles = len(needed_rows) * len(cols)
    merger = StripMerger(c_hi - c_lo, n_moment_channels(n_classes) + sampler.n_sample_channels, read_h,
                         top=rows[needed_rows[0]])
    stats = _RunningRange()
    counts = {"skipped": 0, "valid": 0, "done": 0, "total": n_tiles, "rows": len(needed_rows)}
    reader = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-write")
    writes = []
    try:
        next_strip = reader.submit(source.read, rows[needed_rows[0]], c_lo, read_h, c_hi - c_lo)
        for n, i in enumerate(needed_rows):
            _check_cancel(is_cancelled)
            row = rows[i]
            strip, strip_valid = next_strip.result()
            if n + 1 < len(needed_rows):
                next_strip = reader.submit(source.read, rows[needed_rows[n + 1]], c_lo, read_h, c_hi - c_lo)
            _run_strip(i, n, row, strip, strip_valid, cols, c_lo, grid, window, sampler, merger, batch_size,
                       device, counts, progress, is_cancelled)
            stop = rows[i + 1] if i + 1 < len(rows) else grid.height
            means, weight = merger.take_rows(stop)
            # Only the block's pixels are written: rows [r0, r1) and columns [b_col, b_col + b_width).
            r0, r1 = max(row, b_row), min(stop, b_row + b_height)
            if r1 <= r0:
                continue
            rs, cs = slice(r0 - row, r1 - row), slice(b_col - c_lo, b_col - c_lo + b_width)
            valid = strip_valid[rs, cs] & (weight[rs, cs] > 0)
            counts["valid"] += int(valid.sum())
            writes.append(writer.submit(_write_rows, writers, means[:, rs, cs], valid, decisions, mode,
                                        r0 - b_row, stats, sampler.samples_per_pixel))
            for finished in [w for w in writes if w.done()]:
                finished.result()  # raises a write error here, not at the end
                writes.remove(finished)
        for pending in writes:
            pending.result()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)
    return stats, counts["skipped"], counts["valid"], n_tiles


def _check_cancel(is_cancelled):
    if is_cancelled is not None and is_cancelled():
        raise InferenceCancelled("Cancelled by the user.")


def _run_strip(i, n, row, strip, strip_valid, cols, c_lo, grid, window, sampler, merger, batch_size, device,
               counts, progress, is_cancelled):
    """Predict the tiles of tile row ``i`` (skipping wholly-NoData ones) and fold them into ``merger``.

    ``cols``: the (grid column index, start) of the tiles to run; ``strip`` starts at raster column ``c_lo``.
    """
    import torch

    read_h, read_w = grid.read_shape
    tile_window = window[:read_h, :read_w]
    pending = [(j, col) for j, col in cols if strip_valid[:, col - c_lo : col - c_lo + read_w].any()]
    counts["skipped"] += len(cols) - len(pending)
    counts["done"] += len(cols) - len(pending)
    for b0 in range(0, len(pending), batch_size):
        _check_cancel(is_cancelled)
        batch = pending[b0 : b0 + batch_size]
        tiles = np.stack([_pad_to(strip[:, :, col - c_lo : col - c_lo + read_w], grid.tile) for _, col in batch])
        x = torch.from_numpy(tiles).to(device, non_blocking=True)
        try:
            with torch.inference_mode():
                moments = sampler.moments(x, [(i, j) for j, _ in batch], is_cancelled)
        except UncertaintyError:
            raise
        except Exception as e:  # noqa: BLE001 - any model failure is reported with its tile
            if "out of memory" in str(e).lower():
                raise
            raise TileInferenceError(
                f"The model failed on tile row {i}, column {batch[0][0]} (pixels from row {row}, column "
                f"{batch[0][1]}): {type(e).__name__}: {e}"
            ) from e
        moments = moments[:, :, :read_h, :read_w].cpu().numpy()
        for (j, col), m in zip(batch, moments):
            merger.add(row, col - c_lo, m, tile_window)
        counts["done"] += len(batch)
        progress(100.0 * counts["done"] / counts["total"],
                 f"Tile {counts['done']}/{counts['total']} (tile row {n + 1}/{counts['rows']})")


def _write_rows(writers, means, valid, decisions, mode, row, stats, samples_per_pixel):
    n_classes = decisions.n_classes
    classes, mean_p, unc = uncertainty_from_moments(means, n_classes, mode, samples_per_pixel)
    invalid = ~valid
    class_map = classes.astype(np.uint8)
    if decisions.reject_above is not None:
        class_map = reject_uncertain(class_map, unc, decisions.reject_above, decisions.uncertain_value)
        decisions.rejected += int(np.count_nonzero(valid & (class_map == decisions.uncertain_value)))
    class_map[invalid] = CLASS_NODATA
    writers["classes"].write(class_map[None], row)
    stats.update(unc[valid])
    if "uncertainty" in writers:
        unc[invalid] = np.nan
        writers["uncertainty"].write(unc[None], row)
    if "probabilities" in writers:
        mean_p[:, invalid] = np.nan
        writers["probabilities"].write(mean_p, row)
    if "samples" in writers:
        writers["samples"].write(decisions.sample_bands(means, invalid), row)


class _Decisions:
    """What a run does beyond the statistics: reject uncertain pixels, keep sample bands (one run's options)."""

    def __init__(self, n_classes, card, reject_above, samples, outputs, n_total_samples):
        from .sample_bands import SampleContent, sample_indices

        self.n_classes = n_classes
        self.class_names = list(card.class_names)
        self.reject_above = None if reject_above is None else float(reject_above)
        if self.reject_above is not None and not np.isfinite(self.reject_above):
            raise InvalidOptionError(f"REJECT_ABOVE: expected a finite uncertainty threshold; got {reject_above!r}.")
        self.uncertain_value = None
        if self.reject_above is not None:
            self.uncertain_value = uncertain_class_value(n_classes)
            self.class_names.append(UNCERTAIN_NAME)
        self.rejected = 0
        self.samples = samples if (samples is not None and outputs.samples) else None
        self.sample_indices = ()
        self.kept_class = None
        if self.samples is not None:
            self.content = look_up_option(self.samples.content, SampleContent, "SAMPLE_CONTENT")
            self.sample_indices = tuple(int(i) for i in sample_indices(n_total_samples, self.samples.count))
            if self.content is SampleContent.PROBABILITY:
                index = self.samples.class_index
                if index is None or not 0 <= int(index) < n_classes:
                    raise InvalidOptionError(
                        f"SAMPLE_CLASS: expected a class id from 0 to {n_classes - 1}; got {index!r}."
                    )
                self.kept_class = int(index)
            self.sample_dtype = "uint8" if self.content is SampleContent.CLASS else "float32"
            self.sample_nodata = CLASS_NODATA if self.content is SampleContent.CLASS else float("nan")

    def tags(self):
        tags = {}
        if self.reject_above is not None:
            tags.update(REJECT_ABOVE=repr(self.reject_above), UNCERTAIN_VALUE=self.uncertain_value)
        if self.samples is not None:
            tags.update(SAMPLE_INDICES=",".join(str(i) for i in self.sample_indices),
                        SAMPLE_CONTENT=self.content.value)
        return tags

    def sample_descriptions(self):
        what = "class" if self.kept_class is None else f"p({self.class_names[self.kept_class]})"
        return [f"sample {i} {what}" for i in self.sample_indices]

    def sample_bands(self, means, invalid):
        """The K bands of rows ``means`` (merged channels): arg-max class or one class's probability."""
        first = 2 * self.n_classes + 1
        extra = means[first:]
        if self.kept_class is None:
            k = len(self.sample_indices)
            bands = extra.reshape(k, self.n_classes, *extra.shape[1:]).argmax(axis=1).astype(np.uint8)
            bands[:, invalid] = CLASS_NODATA
        else:
            bands = extra.astype(np.float32)
            bands[:, invalid] = np.nan
        return bands
