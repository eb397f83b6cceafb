"""Tiled, streaming segmentation with uncertainty over a whole raster: a short driver over named stages.

(~400 lines: the public entry point's options, tags and summary, plus the block run; no tile geometry; what a run
decides beyond the statistics (rejection, sample bands) lives in :mod:`engine.run_decisions`.)

:func:`predict_uncertainty` checks the options, opens the raster, plans the block on the global grid
(:func:`engine.tiling.plan_block`), readies the sampler and the writers, and hands them to a :class:`_BlockRun`,
whose loop is: for each planned strip, read it once (:class:`engine.raster_io.RasterSource`), skip tiles that are
wholly NoData, turn the others into moments (:class:`engine.samplers.UncertaintySampler`), fold them into the
:class:`engine.merging.StripMerger` with a Gaussian window, then finalise and write every row of the block no
later tile can reach. Peak memory is one strip (tile height × block width plus a halo) of input, moments and
outputs, whatever the raster's height.

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

from .constants import CLASS_NODATA, ENGINE_VERSION, MAX_SAMPLES
from .errors import InvalidOptionError, TileInferenceError, UncertaintyError, is_out_of_memory
from .hooks import RunHooks
from .options import TTAMode, UncertaintyMode, look_up_option
from .raster_io import BandScaling, GeoTiffWriter, RasterSource
from .run_decisions import RunDecisions
from .sample_bands import SampleBands
from .statistics import n_moment_channels, uncertainty_from_moments
from .tiling import BlockPlan, TileGrid, check_block, check_tiling, gaussian_window, pad_to, plan_block

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
    Raises :class:`UncertaintyError` subclasses; on any failure or cancel no output file is left behind.
    """
    import torch

    from .dropout import set_dropout_active
    from .prefix_cache import PlainForward, build_mc_forward
    from .probe import run_probe
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
    started = time.perf_counter()
    decisions = RunDecisions(loaded.n_classes, card.class_names, reject_above=reject_above, samples=samples,
                             samples_path=outputs.samples, n_total_samples=len(views) * n_samples)

    scaling = BandScaling(card.scale, card.mean, card.std, card.nodata_fill)
    with RasterSource(input_path, card.bands, scaling) as source:
        grid = TileGrid(source.height, source.width, tile, stride)
        plan = plan_block(grid, check_block(block, source.height, source.width))
        model = loaded.model
        set_dropout_active(model, stochastic)
        with torch.inference_mode():
            if stochastic and prefix_cache:
                probe = run_probe(model, len(card.bands), tile, device)[0]
                forward = build_mc_forward(model, probe, log=hooks.log)
            else:
                forward = PlainForward(model)
        cached = bool(getattr(forward, "cached", False))
        sampler = UncertaintySampler(
            forward, loaded.n_classes, views, n_samples, seed, device,
            sample_chunk or DEFAULT_SAMPLE_CHUNK[on_cuda], view_chunk=DEFAULT_VIEW_CHUNK[on_cuda],
            squares=mode is UncertaintyMode.VARIANCE, entropies=mode is UncertaintyMode.MUTUAL_INFORMATION,
            temperature=card.temperature, kept_samples=decisions.sample_indices, kept_class=decisions.kept_class,
        )
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
            writers.open(outputs, source, block=plan.block, tags=tags, n_classes=loaded.n_classes,
                         class_names=card.class_names, mode=mode, decisions=decisions)
            run = _BlockRun(plan, source, sampler, writers, hooks, mode=mode, batch_size=int(batch_size),
                            decisions=decisions)
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
        n_tiles=plan.n_tiles,
        n_skipped=run.n_skipped,
        n_samples_per_pixel=sampler.samples_per_pixel,
        seed=seed,
        seconds=time.perf_counter() - started,
        megapixels=plan.block[2] * plan.block[3] / 1e6,
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


class _Writers:
    """The run's output GeoTIFFs by name (classes, uncertainty, probabilities); all committed or none."""

    def __init__(self):
        self.by_name = {}

    def open(self, outputs, source, *, block, tags, n_classes, class_names, mode, decisions):
        self.by_name["classes"] = GeoTiffWriter(
            outputs.classes, source, 1, "uint8", CLASS_NODATA, tags=tags, descriptions=["class"], block=block
        )
        if outputs.uncertainty:
            self.by_name["uncertainty"] = GeoTiffWriter(
                outputs.uncertainty, source, 1, "float32", float("nan"), tags=tags, descriptions=[mode.value],
                block=block,
            )
        if outputs.probabilities:
            self.by_name["probabilities"] = GeoTiffWriter(
                outputs.probabilities, source, n_classes, "float32", float("nan"), tags=tags,
                descriptions=[f"p({name})" for name in class_names], block=block,
            )
        if decisions.samples is not None:
            self.by_name["samples"] = GeoTiffWriter(
                outputs.samples, source, len(decisions.sample_indices), decisions.sample_dtype,
                decisions.sample_nodata, tags=tags, descriptions=decisions.sample_descriptions(), block=block,
            )

    def write(self, name, array, row):
        if name in self.by_name:
            self.by_name[name].write(array, row)

    def __contains__(self, name):
        return name in self.by_name

    def commit(self):
        for writer in self.by_name.values():
            writer.finish()  # every file complete before any replaces an older one of its name
        for writer in self.by_name.values():
            writer.commit()

    def abort(self):
        for writer in self.by_name.values():
            writer.abort()

    def paths(self):
        return {name: str(writer.path) for name, writer in self.by_name.items()}


class _BlockRun:
    """One :class:`~engine.tiling.BlockPlan` through the sampler into the writers; holds what the stages share.

    One background thread reads the next strip and another finalises and writes finished rows while the model
    runs (GDAL and numpy release the GIL), each on its own dataset, in order.
    """

    def __init__(self, plan: BlockPlan, source, sampler, writers: _Writers, hooks: RunHooks, *, mode, batch_size,
                 decisions):
        from .merging import StripMerger

        self.plan, self.source, self.sampler, self.writers, self.hooks = plan, source, sampler, writers, hooks
        self.mode, self.batch_size, self.decisions = mode, batch_size, decisions
        self.n_classes = sampler.n_classes
        read_h, read_w = plan.read_shape
        self.tile_window = gaussian_window(plan.grid.tile)[:read_h, :read_w]
        channels = n_moment_channels(self.n_classes) + sampler.n_sample_channels  # moments, then kept samples
        self.merger = StripMerger(plan.read_width, channels, read_h, top=plan.top)
        self.stats = _RunningRange()
        self.n_done = self.n_skipped = self.n_valid = 0

    def _read(self, strip):
        return self.source.read(strip.row, self.plan.col_lo, self.plan.read_shape[0], self.plan.read_width)

    def run(self):
        from concurrent.futures import ThreadPoolExecutor

        plan, strips = self.plan, self.plan.strips
        reader = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-read")
        writer = ThreadPoolExecutor(1, thread_name_prefix="seg-uncertainty-write")
        writes = []
        try:
            next_strip = reader.submit(self._read, strips[0])
            for strip in strips:
                self.hooks.check_cancel()
                data, valid = next_strip.result()
                if strip.number + 1 < len(strips):
                    next_strip = reader.submit(self._read, strips[strip.number + 1])
                self._predict_strip(strip, data, valid)
                means, weight = self.merger.take_rows(strip.final_stop)
                if strip.write is None:
                    continue
                rs, cs = plan.block_rows(strip), plan.block_columns()
                valid = valid[rs, cs] & (weight[rs, cs] > 0)
                self.n_valid += int(valid.sum())
                writes.append(writer.submit(self._write_rows, means[:, rs, cs], valid, strip.write[0] - plan.block[0]))
                for finished in [w for w in writes if w.done()]:
                    finished.result()  # raises a write error here, not at the end
                    writes.remove(finished)
            for pending in writes:
                pending.result()
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            writer.shutdown(wait=True, cancel_futures=True)

    def _predict_strip(self, strip, data, valid):
        """Predict the tiles of ``strip`` (skipping wholly-NoData ones) and fold them into the merger."""
        import torch

        plan, (read_h, read_w) = self.plan, self.plan.read_shape
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
                self.merger.add(strip.row, col - plan.col_lo, m, self.tile_window)
            self.n_done += len(batch)
            self.hooks.advance(
                self.n_done, plan.n_tiles,
                f"Tile {self.n_done}/{plan.n_tiles} (tile row {strip.number + 1}/{len(plan.strips)})",
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

    def _write_rows(self, means, valid, row):
        """Finalise merged moments of block rows starting at ``row`` into classes, probabilities, uncertainty."""
        classes, mean_p, unc = uncertainty_from_moments(means, self.n_classes, self.mode,
                                                        self.sampler.samples_per_pixel)
        invalid = ~valid
        class_map = self.decisions.classify(classes, unc, valid)
        self.writers.write("classes", class_map[None], row)
        self.stats.update(unc[valid])
        if "uncertainty" in self.writers:
            unc[invalid] = np.nan
            self.writers.write("uncertainty", unc[None], row)
        if "probabilities" in self.writers:
            mean_p[:, invalid] = np.nan
            self.writers.write("probabilities", mean_p, row)
        if "samples" in self.writers:
            self.writers.write("samples", self.decisions.sample_bands(means, invalid), row)
