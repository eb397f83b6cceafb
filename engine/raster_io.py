"""Raster input and output: windowed reads with NoData masks and band scaling; GeoTIFFs written atomically.

Reads use rasterio windows, so only the current strip is in memory. The valid mask of a pixel is the GDAL
dataset mask of every band the model reads (NoData value, internal mask or alpha band), and its values must be
finite. Outputs copy the input's CRS, transform (rotated or sheared ones too), GCPs and size, are tiled DEFLATE
GeoTIFFs, and are written under a hidden temporary name in the destination folder, renamed into place by
:meth:`GeoTiffWriter.commit` only when the whole run succeeded (after checking that every block reached the
disk); :meth:`GeoTiffWriter.abort` removes them, committed ones included. Every GDAL failure (rasterio's
``RasterioIOError``, ``RasterioError`` or bare ``CPLE_*`` errors) becomes a :class:`RasterInputError` or
:class:`OutputWriteError` naming the file.

Datasets read whole-width (evaluation): :func:`open_raster`, :func:`open_on_grid` (same size, transform and
CRS, or a :class:`RasterInputError` that says how to resample), :func:`block_row_strips`, :func:`read_masked` and
:func:`read_class_ids`. Text outputs (reports) are written with :func:`write_text_atomic`.

Why one module of ~450 lines: it is the engine's only door to GDAL, so that every open, read and write shares
one error translation (``_IO_ERRORS``) and one temporary-file-and-rename discipline.
"""

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from typing import Iterator, Optional, Tuple

from .errors import OutputWriteError, RasterInputError

try:  # GDAL errors that rasterio raises without wrapping them (CPLE_AppDefinedError, ...)
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - other rasterio layouts
    CPLE_BaseError = RasterioError

__all__ = [
    "RasterSource",
    "GeoTiffWriter",
    "BandScaling",
    "describe_raster_problem",
    "OutputLayout",
    "overview_factors",
    "gdal_cache_limit",
    "open_raster",
    "open_on_grid",
    "same_grid",
    "describe_grid",
    "block_row_strips",
    "read_masked",
    "read_class_ids",
    "check_output_folder",
    "write_text_atomic",
]

_TRANSFORM_TOLERANCE = 1e-6  # of a pixel

#: What GDAL/rasterio raise for a failed open, read, write or close.
_IO_ERRORS = (OSError, RasterioError, CPLE_BaseError)


class BandScaling:
    """Raw pixel values → model input: x / scale, or (x - mean) / std per band (card's ``input:``).

    NoData pixels are fed to the model as the scaled ``nodata_fill`` (a raw value, the card's
    ``input.nodata_fill``), or as 0 in model units when none is given; they are NoData in the outputs either way.
    """

    def __init__(self, scale=None, mean=None, std=None, nodata_fill=None):
        self.scale = scale
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = None if std is None else np.asarray(std, dtype=np.float32)[:, None, None]
        self.nodata_fill = nodata_fill

    def fill_values(self, n_bands):
        """What NoData pixels hold in model units: shape (n_bands, 1)."""
        if self.nodata_fill is None:
            return np.zeros((n_bands, 1), dtype=np.float32)
        raw = np.full((n_bands, 1, 1), self.nodata_fill, dtype=np.float32)
        return self(raw)[:, :, 0]

    def __call__(self, x):
        x = x.astype(np.float32, copy=False)
        if self.mean is not None:
            return (x - self.mean) / self.std
        if self.scale:
            return x / np.float32(self.scale)
        return x


class RasterSource:
    """An open input raster read through windows of the bands the model uses (1-based ``bands``)."""

    def __init__(self, path, bands, scaling):
        self.path = str(path)
        local = "://" not in self.path and not self.path.startswith("/vsi")
        if local and not Path(self.path).exists():
            raise RasterInputError(f"INPUT raster {self.path} does not exist. Choose an existing raster file.")
        if local and Path(self.path).is_file() and Path(self.path).stat().st_size == 0:
            raise RasterInputError(
                f"INPUT raster {self.path} is empty (0 bytes). Choose the complete raster file (copy or export "
                "it again)."
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.path)
        except _IO_ERRORS as e:
            raise RasterInputError(
                f"INPUT raster {self.path} cannot be opened by GDAL ({e}). Check that the file is a complete, "
                "readable raster."
            ) from e
        self.bands = list(bands)
        if max(self.bands) > self.dataset.count:
            self.close()
            raise RasterInputError(
                f"The model card reads bands {self.bands}, but INPUT raster {self.path} has "
                f"{self.dataset.count} band(s). Choose a raster with those bands or edit input: bands: in the card."
            )
        self.scaling = scaling

    @property
    def height(self):
        return self.dataset.height

    @property
    def width(self):
        return self.dataset.width

    def read(self, row, col, height, width):
        """Model input (bands, h, w) float32, invalid pixels set to 0, and the valid mask (h, w) bool."""
        window = Window(col, row, width, height)
        try:
            raw = self.dataset.read(self.bands, window=window)
            masks = self.dataset.read_masks(self.bands, window=window)
        except _IO_ERRORS as e:
            raise RasterInputError(
                f"Reading INPUT raster {self.path} failed at rows {row}..{row + height} ({e}). The file is "
                "truncated or corrupt; re-export it."
            ) from e
        valid = np.all(masks > 0, axis=0)
        x = self.scaling(raw)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.all(np.isfinite(x), axis=0)
        x[:, ~valid] = self.scaling.fill_values(x.shape[0])
        return np.ascontiguousarray(x, dtype=np.float32), valid

    def close(self):
        self.dataset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: GDAL's block cache (MiB) while a run reads and writes: GDAL's default is 5 % of RAM, and the blocks it keeps
#: (input read, outputs written, then re-read for overviews) grew a run's peak memory with the raster's size
#: (+260 MB at 16,384 px wide). A strip needs a few block rows of input and of each output: 16 MiB is plenty
#: (with 64 MiB the cache filled up on wide rasters only, 48 MB more than on a 2,048-px one).
RUN_GDAL_CACHE_MB = 16

_cache_lock = threading.Lock()
_cache_users = [0, None]  # runs in progress, the cache size to restore


@contextlib.contextmanager
def gdal_cache_limit(megabytes=RUN_GDAL_CACHE_MB):
    """Within the block, GDAL's block cache holds at most ``megabytes`` MiB (never more than it was).

    The cache is one per process: the limit is taken by the first run that starts and given back by the last
    that ends, so concurrent runs share it. Without GDAL's Python bindings nothing changes.
    """
    try:
        from osgeo import gdal
    except ImportError:  # pragma: no cover - rasterio without the bindings
        yield
        return
    with _cache_lock:
        if _cache_users[0] == 0:
            _cache_users[1] = gdal.GetCacheMax()
            gdal.SetCacheMax(min(_cache_users[1], int(megabytes * 2**20)))
        _cache_users[0] += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_users[0] -= 1
            if _cache_users[0] == 0:
                gdal.SetCacheMax(_cache_users[1])


OUTPUT_BLOCK_SIZE = 256  # px, square output tiles (column panels start on multiples of it)


class OutputLayout:
    """How outputs are laid out beyond their pixels: internal ``overviews`` (default on: QGIS then draws a large
    result at once instead of reading every pixel), or a Cloud Optimized GeoTIFF (``cog``: tiles and overviews
    in the order the COG layout prescribes, written by GDAL's COG driver from the finished file, which costs one
    extra copy on disk while it is written)."""

    def __init__(self, overviews=True, cog=False):
        self.overviews = bool(overviews)
        self.cog = bool(cog)


def overview_factors(width, height, smallest=OUTPUT_BLOCK_SIZE):
    """Factors 2, 4, 8, ... until the overview's longer side fits in ``smallest`` px (none for small rasters).

    >>> overview_factors(65536, 1024), overview_factors(200, 100)
    ([2, 4, 8, 16, 32, 64, 128, 256], [])
    """
    factors, f = [], 2
    while max(width, height) / (f // 2) > smallest:
        factors.append(f)
        f *= 2
    return factors


class GeoTiffWriter:
    """A GeoTIFF on the input's grid, written under a temporary name and renamed at :meth:`commit`.

    GDAL caches blocks and writes most of them when the file is closed, and rasterio does not raise for a
    failed close, so a full disk or a file size limit can leave a truncated file behind a "successful" close.
    :meth:`finish` therefore reopens the closed temporary file and checks that every block of every band was
    written inside the file (TIFF ``BLOCK_OFFSET``/``BLOCK_SIZE``); any failure of create, write, close, that
    check or the rename is an :class:`OutputWriteError` naming the file, and the temporary file is removed.
    A destination that is the input raster, or that another writer of this process is writing, is refused.
    """

    _in_progress = set()  # resolved destinations being written by this process (all threads)
    _lock = threading.Lock()

    def __init__(self, path, source, count, dtype, nodata, *, tags=None, descriptions=None, block=None,
                 layout=None):
        self.path = Path(path)
        self.dataset = None
        self.layout = layout or OutputLayout()
        self._cog_path = None
        self.finished = self.committed = False
        folder = self.path.parent
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise OutputWriteError(f"Output folder {folder} {what}. Create the folder or choose another path.")
        if not os.access(folder, os.W_OK):
            raise OutputWriteError(f"Output folder {folder} is not writable. Choose a folder you can write to.")
        if self.path.is_dir():
            raise OutputWriteError(f"Output {self.path} is a folder. Give a file name such as {self.path / 'out.tif'}.")
        self._key = str(self.path.resolve())
        if self._key == _resolved(source.path):
            raise OutputWriteError(
                f"Output {self.path} is the INPUT raster itself. Choose another file name: the input is read "
                "while the outputs are written."
            )
        with self._lock:
            if self._key in self._in_progress:
                raise OutputWriteError(
                    f"Output {self.path} is already being written (another output of this run, or another run, "
                    "has the same file name). Give each output its own file name."
                )
            self._in_progress.add(self._key)
        self.temp_path = folder / f".{self.path.stem}.partial-{uuid.uuid4().hex[:8]}.tif"
        self.dtype = dtype
        ds = source.dataset
        row, col, height, width = block or (0, 0, ds.height, ds.width)
        whole = (row, col, height, width) == (0, 0, ds.height, ds.width)
        profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": dtype,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": OUTPUT_BLOCK_SIZE,
            "blockysize": OUTPUT_BLOCK_SIZE,
            "compress": "deflate",
            "bigtiff": "if_safer",
        }
        if ds.crs is not None:
            profile["crs"] = ds.crs
        gcps, gcp_crs = ds.gcps
        if not ds.transform.is_identity or not gcps:
            profile["transform"] = ds.transform if whole else ds.window_transform(Window(col, row, width, height))
        if dtype == "float32":
            profile["predictor"] = 3
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.temp_path, "w", **profile)
                if gcps and ds.transform.is_identity and whole:
                    self.dataset.gcps = (gcps, gcp_crs)
            if tags:
                self.dataset.update_tags(**{k: str(v) for k, v in tags.items()})
            for i, text in enumerate(descriptions or [], start=1):
                self.dataset.set_band_description(i, text)
        except _IO_ERRORS as e:
            self.abort()
            raise OutputWriteError(
                f"Cannot create output {self.path} ({e}). Check the folder and free space{self._free_space()}."
            ) from e
        except BaseException:
            self.abort()
            raise

    def write(self, array, row, col=0):
        """Write ``array`` (count, h, w) at rows [row, row + h) and columns [col, col + w) (the full width when
        ``col`` is 0 and ``w`` the file's width; a local run fills the file panel by panel, a cluster run block by
        block)."""
        count, h, w = array.shape
        try:
            self.dataset.write(array, window=Window(col, row, w, h))
        except _IO_ERRORS as e:
            raise OutputWriteError(
                f"Writing {self.path} failed ({e}). Check free space on that disk{self._free_space()}."
            ) from e

    def finish(self):
        """Flush and close the temporary file and check it is complete; nothing is renamed yet."""
        if self.finished:
            return
        cause = None
        try:
            self.dataset.close()
            problem = _incomplete_blocks(self.temp_path)
            if not problem:
                problem = self._add_overviews()
        except _IO_ERRORS as e:
            problem, cause = f"{type(e).__name__}: {e}", e
        if problem:
            self.abort()
            raise OutputWriteError(
                f"Finishing {self.path} failed: the file could not be written completely ({problem}). The disk "
                f"is probably full or a file size limit was reached{self._free_space()}. Free some space or "
                "choose another folder, then run again."
            ) from cause
        self.finished = True

    def _add_overviews(self):
        """Internal overviews on the closed temporary file, or its Cloud Optimized GeoTIFF copy in its place.

        Returns a problem description like :func:`_incomplete_blocks`, or None.
        """
        layout = self.layout
        if not (layout.overviews or layout.cog):
            return None
        resampling = "NEAREST" if self.categorical else "AVERAGE"
        if not layout.cog:
            from rasterio.enums import Resampling

            with rasterio.open(self.temp_path, "r+") as ds:
                factors = overview_factors(ds.width, ds.height)
                if factors:
                    ds.build_overviews(factors, getattr(Resampling, resampling.lower()))
                    ds.update_tags(ns="rio_overview", resampling=resampling.lower())
            return None
        from rasterio.shutil import copy as copy_dataset

        cog = self.temp_path.with_name(self.temp_path.stem + "-cog.tif")
        self._cog_path = cog
        options = {"COMPRESS": "DEFLATE", "BLOCKSIZE": OUTPUT_BLOCK_SIZE, "OVERVIEW_RESAMPLING": resampling,
                   "BIGTIFF": "IF_SAFER", "OVERVIEWS": "AUTO"}
        if not self.categorical:
            options["PREDICTOR"] = "FLOATING_POINT"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            copy_dataset(str(self.temp_path), str(cog), driver="COG", **options)
        os.replace(cog, self.temp_path)
        self._cog_path = None
        return None

    @property
    def categorical(self):
        return self.dtype == "uint8"

    def commit(self):
        """:meth:`finish`, then rename into place (replacing an older file of that name)."""
        self.finish()
        try:
            os.replace(self.temp_path, self.path)
        except OSError as e:
            self.abort()
            raise OutputWriteError(f"Finishing {self.path} failed ({e}). Check the folder and free space.") from e
        self.committed = True
        self._release()

    def abort(self):
        """Close and delete the temporary file; after a :meth:`commit`, delete the committed file too.

        So that a run whose later output fails leaves no output at all; an older file the commit replaced is
        not restored.
        """
        with contextlib.suppress(Exception):  # the file is removed either way
            if self.dataset is not None and not self.dataset.closed:
                self.dataset.close()
        self._remove_temp()
        if self.committed:
            _unlink(self.path)
            self.committed = False
        self._release()

    def _release(self):
        with self._lock:
            self._in_progress.discard(getattr(self, "_key", None))

    def _free_space(self):
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return ""
        return f" ({free / 2**20:.1f} MiB free in {self.path.parent})"

    def _remove_temp(self):
        if getattr(self, "temp_path", None) is None:
            return
        for p in (self.temp_path, Path(str(self.temp_path) + ".aux.xml"), getattr(self, "_cog_path", None)):
            if p is None:
                continue
            _unlink(p)


def _resolved(path):
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return str(path)


def _unlink(path):
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass
    except OSError:  # a folder we may no longer write to: nothing more can be done
        pass


def _incomplete_blocks(path):
    """``None`` when every block of every band of the GeoTIFF ``path`` lies inside the file, else a description.

    GDAL reports a written block's place in the TIFF metadata domain; a block whose write failed has no offset,
    a zero size, or ends past the end of a truncated file.
    """
    size = os.path.getsize(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            for band in ds.indexes:
                for (i, j), _ in ds.block_windows(band):
                    offset = ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=band)
                    length = ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=band)
                    if not offset or not length or int(length) <= 0 or int(offset) + int(length) > size:
                        return f"block row {i}, column {j} of band {band} is missing; the file has {size} bytes"
                if ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "PIXEL":
                    break  # one block holds every band
    return None


def describe_raster_problem(path):
    """Why GDAL cannot read the raster at ``path`` (missing, empty, truncated, not a raster), or ``None``.

    The text is the :class:`RasterInputError` message :class:`RasterSource` would raise.
    """
    try:
        RasterSource(path, [1], BandScaling()).close()
    except RasterInputError as e:
        if e.__cause__ is None and "band(s)" in str(e):
            return None  # it opens (a raster without bands): not a problem of the file's readability
        return str(e)
    return None


# ---------------------------------------------------------------------- whole-width datasets (evaluation)
class _NoDataset:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def open_raster(path: str, what: str):
    """``rasterio.open(path)``; a failure is a :class:`RasterInputError` naming ``what`` and ``path``."""
    try:
        return rasterio.open(path)
    except _IO_ERRORS as e:
        raise RasterInputError(f"{what} {path}: cannot be opened ({e}). Check the path and that it is a raster.") \
            from e


def open_on_grid(path: Optional[str], what: str, src, src_path: str):
    """:func:`open_raster` of ``path`` checked to lie on the grid of the open dataset ``src`` (read from
    ``src_path``); a context manager yielding None when ``path`` is None."""
    if path is None:
        return _NoDataset()
    other = open_raster(path, what)
    if not same_grid(src, other):
        other.close()
        raise RasterInputError(
            f"{what} {path} is not on the probability raster's grid: probability raster {src_path}: "
            f"{describe_grid(src)}; {what}: {describe_grid(other)}. Resample it onto the probability grid "
            "(e.g. gdalwarp with -te/-tr/-t_srs of the probability raster, or QGIS Align Rasters)."
        )
    return other


def same_grid(a, b) -> bool:
    """Same width, height and CRS, and transforms equal within 1e-6 of a pixel."""
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    pixel = max(abs(a.transform.a), abs(a.transform.e), abs(a.transform.b), abs(a.transform.d))
    return all(abs(x - y) <= _TRANSFORM_TOLERANCE * pixel for x, y in zip(a.transform[:6], b.transform[:6]))


def describe_grid(ds) -> str:
    t = ds.transform
    crs = ds.crs.to_string() if ds.crs else "no CRS"
    return f"{ds.width}×{ds.height} px, origin ({t.c:.6g}, {t.f:.6g}), pixel ({t.a:.6g}, {t.e:.6g}), {crs}"


def block_row_strips(src, max_values: int) -> Iterator[Tuple[Window, int]]:
    """Yield (window, last row + 1): full-width strips of whole block rows, at most ``max_values`` values
    (bands × rows × width) each, but at least one block row."""
    block_rows = src.block_shapes[0][0] if src.block_shapes else 1
    per_block_row = max(1, block_rows * src.width * src.count)
    rows = block_rows * max(1, max_values // per_block_row)
    for row in range(0, src.height, rows):
        height = min(rows, src.height - row)
        yield Window(0, row, src.width, height), row + height


def _read(ds, indexes, window):
    try:
        return ds.read(indexes, window=window), ds.read_masks(indexes, window=window)
    except _IO_ERRORS as e:
        raise RasterInputError(
            f"Reading raster {ds.name} failed at rows {window.row_off}..{window.row_off + window.height} ({e}). "
            "The file is truncated or corrupt; re-export it."
        ) from e


def read_masked(ds, window: Window, band: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(data, valid) of every band (bands, h, w) or of one ``band`` (h, w); valid where every band's GDAL mask
    is set."""
    data, masks = _read(ds, band, window)
    valid = masks != 0
    return data, (valid if band is not None else valid.all(axis=0))


def read_class_ids(ds, window: Window, fill: int) -> np.ndarray:
    """Band 1 as int64 class ids (float64 for float rasters), ``fill`` where masked or not finite."""
    data, masks = _read(ds, 1, window)
    missing = masks == 0
    if data.dtype.kind == "f":
        data = data.astype(np.float64)
        missing |= ~np.isfinite(data)
    else:
        data = data.astype(np.int64)
    data[missing] = fill
    return data


# ---------------------------------------------------------------------- text outputs
def check_output_folder(path: str) -> None:
    """An :class:`OutputWriteError` unless the folder of ``path`` exists and is writable."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputWriteError(f"{path}: the folder {folder} does not exist; create it or choose another path.")
    if not os.access(folder, os.W_OK):
        raise OutputWriteError(f"{path}: the folder {folder} is not writable; choose another path.")


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder and a rename: readers see
    the old file or the whole new one, never a part."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as e:
        raise OutputWriteError(f"{path}: cannot create a file in {folder} ({e}).") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OutputWriteError(f"{path}: cannot be written ({e}).") from e
        raise
