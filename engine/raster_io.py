"""Raster input and output: windowed reads with NoData masks and band scaling; GeoTIFFs written atomically.

Reads use rasterio windows, so only the current strip is in memory. The valid mask of a pixel is the GDAL
dataset mask of every band the model reads (NoData value, internal mask or alpha band), and its values must be
finite. Outputs copy the input's CRS, transform (rotated or sheared ones too), GCPs and size, are tiled DEFLATE
GeoTIFFs, and are written under a hidden temporary name in the destination folder, renamed into place by
:meth:`GeoTiffWriter.commit` only when the whole run succeeded; :meth:`GeoTiffWriter.abort` removes them.
"""

import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .errors import OutputWriteError, RasterInputError

__all__ = ["RasterSource", "GeoTiffWriter", "BandScaling"]


class BandScaling:
    """Raw pixel values → model input: x / scale, or (x - mean) / std per band (card's ``input:``)."""

    def __init__(self, scale=None, mean=None, std=None):
        self.scale = scale
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)[:, None, None]
        self.std = None if std is None else np.asarray(std, dtype=np.float32)[:, None, None]

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
        if not Path(self.path).exists() and "://" not in self.path and not self.path.startswith("/vsi"):
            raise RasterInputError(f"INPUT raster {self.path} does not exist. Choose an existing raster file.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.path)
        except (RasterioIOError, OSError) as e:
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
        except (RasterioIOError, OSError) as e:
            raise RasterInputError(
                f"Reading INPUT raster {self.path} failed at rows {row}..{row + height} ({e}). The file is "
                "truncated or corrupt; re-export it."
            ) from e
        valid = np.all(masks > 0, axis=0)
        x = self.scaling(raw)
        if np.issubdtype(raw.dtype, np.floating):
            valid &= np.all(np.isfinite(x), axis=0)
        x[:, ~valid] = 0.0
        return np.ascontiguousarray(x, dtype=np.float32), valid

    def close(self):
        self.dataset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GeoTiffWriter:
    """A GeoTIFF on the input's grid, written under a temporary name and renamed at :meth:`commit`."""

    def __init__(self, path, source, count, dtype, nodata, tags=None, descriptions=None):
        self.path = Path(path)
        folder = self.path.parent
        if not folder.is_dir():
            raise OutputWriteError(f"Output folder {folder} does not exist. Create it or choose another path.")
        if not os.access(folder, os.W_OK):
            raise OutputWriteError(f"Output folder {folder} is not writable. Choose a folder you can write to.")
        self.temp_path = folder / f".{self.path.stem}.partial-{uuid.uuid4().hex[:8]}.tif"
        ds = source.dataset
        profile = {
            "driver": "GTiff",
            "width": ds.width,
            "height": ds.height,
            "count": count,
            "dtype": dtype,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "bigtiff": "if_safer",
        }
        if ds.crs is not None:
            profile["crs"] = ds.crs
        gcps, gcp_crs = ds.gcps
        if not ds.transform.is_identity or not gcps:
            profile["transform"] = ds.transform
        if dtype == "float32":
            profile["predictor"] = 3
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = rasterio.open(self.temp_path, "w", **profile)
                if gcps and ds.transform.is_identity:
                    self.dataset.gcps = (gcps, gcp_crs)
        except (RasterioIOError, OSError) as e:
            self._remove_temp()
            raise OutputWriteError(f"Cannot create output {self.path} ({e}). Check the folder and free space.") from e
        if tags:
            self.dataset.update_tags(**{k: str(v) for k, v in tags.items()})
        for i, text in enumerate(descriptions or [], start=1):
            self.dataset.set_band_description(i, text)

    def write(self, array, row):
        """Write ``array`` (count, h, w) at rows [row, row + h), full width."""
        count, h, w = array.shape
        try:
            self.dataset.write(array, window=Window(0, row, w, h))
        except (RasterioIOError, OSError) as e:
            raise OutputWriteError(f"Writing {self.path} failed ({e}). Check free space on that disk.") from e

    def commit(self):
        """Flush, close and rename into place (replacing an older file of that name)."""
        try:
            self.dataset.close()
            os.replace(self.temp_path, self.path)
        except (RasterioIOError, OSError) as e:
            self._remove_temp()
            raise OutputWriteError(f"Finishing {self.path} failed ({e}). Check free space on that disk.") from e

    def abort(self):
        """Close and delete the temporary file; the destination is left as it was."""
        try:
            if not self.dataset.closed:
                self.dataset.close()
        except Exception:  # noqa: BLE001 - the file is removed either way
            pass
        self._remove_temp()

    def _remove_temp(self):
        for p in (self.temp_path, Path(str(self.temp_path) + ".aux.xml")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
