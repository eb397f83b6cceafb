"""Areas of interest: an extent snapped to the raster's pixel grid, and polygons that mask the outputs.

An extent (xmin, ymin, xmax, ymax) in the raster's CRS becomes the block (row, col, height, width) of every
pixel it touches: the corners go through the inverse geotransform, and the pixel window is snapped **outward**
(floor of the minimum, ceil of the maximum; a corner within 1e-6 px of a pixel edge counts as on it, so an
extent taken from the raster's own grid is not widened by float rounding), then clipped to the raster. The
outputs of a block keep the input's pixel grid (:func:`engine.inference.predict_uncertainty`, ``block=``), and
the tiles that run are those of the raster's global grid that touch it, so the pixels equal those of a
whole-raster run.

Polygons (GeoJSON-like geometry mappings in the raster's CRS) mask the outputs, not the input: a pixel whose
centre lies outside every polygon is NoData; the model still sees the real pixels around it, so a pixel inside
equals the whole-raster run's. Masks are rasterised per strip (:meth:`PolygonMask.window_mask`), never for the
whole extent at once, so their memory is one strip's.
"""

import math

from .errors import InvalidOptionError

__all__ = ["block_for_extent", "PolygonMask", "geometry_bounds"]

_SNAP_EPS = 1e-6


def block_for_extent(extent, transform, height, width):
    """(row, col, height, width) of the pixels of a ``height`` × ``width`` raster touched by ``extent``.

    ``extent``: (xmin, ymin, xmax, ymax) in the raster's CRS; ``transform``: its affine geotransform (any
    rotation: all four corners are mapped). Raises :class:`InvalidOptionError` when the extent misses the raster.

    >>> from affine import Affine
    >>> block_for_extent((105, 50, 131, 95), Affine(10, 0, 100, 0, -10, 100), 20, 20)
    (0, 0, 5, 4)
    """
    xmin, ymin, xmax, ymax = (float(v) for v in extent)
    if not (xmax > xmin and ymax > ymin):
        raise InvalidOptionError(f"EXTENT {tuple(extent)} is empty: it needs xmax > xmin and ymax > ymin.")
    inverse = ~transform
    cols, rows = zip(*(inverse * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)))
    c0 = max(0, math.floor(min(cols) + _SNAP_EPS))
    r0 = max(0, math.floor(min(rows) + _SNAP_EPS))
    c1 = min(int(width), math.ceil(max(cols) - _SNAP_EPS))
    r1 = min(int(height), math.ceil(max(rows) - _SNAP_EPS))
    if c1 <= c0 or r1 <= r0:
        raise InvalidOptionError(
            f"EXTENT {tuple(extent)} does not overlap the input raster (pixel window rows {math.floor(min(rows))}.."
            f"{math.ceil(max(rows))}, columns {math.floor(min(cols))}..{math.ceil(max(cols))} of a {height}×{width} "
            "raster). Choose an extent over the raster, in the raster's CRS or with its CRS given."
        )
    return r0, c0, r1 - r0, c1 - c0


def geometry_bounds(geometries):
    """(xmin, ymin, xmax, ymax) of GeoJSON-like ``geometries`` (their coordinates' bounding box)."""
    xs, ys = [], []

    def walk(coords):
        if len(coords) and isinstance(coords[0], (int, float)):
            xs.append(coords[0])
            ys.append(coords[1])
        else:
            for c in coords:
                walk(c)

    for g in geometries:
        if g.get("type") == "GeometryCollection":
            for part in g.get("geometries", []):
                walk(part["coordinates"])
        else:
            walk(g["coordinates"])
    if not xs:
        raise InvalidOptionError("MASK holds no polygon with coordinates. Choose a layer with polygons.")
    return min(xs), min(ys), max(xs), max(ys)


class PolygonMask:
    """Polygons (GeoJSON-like mappings, raster CRS) rasterised on demand for windows of the raster's grid.

    A pixel is inside when its centre is inside a polygon (GDAL's rasterisation rule without ALL_TOUCHED).
    """

    def __init__(self, geometries, transform):
        self.geometries = [g for g in geometries if g]
        if not self.geometries:
            raise InvalidOptionError("MASK holds no polygon. Choose a layer with at least one polygon.")
        for g in self.geometries:
            kind = g.get("type", "")
            if kind not in ("Polygon", "MultiPolygon", "GeometryCollection"):
                raise InvalidOptionError(f"MASK must hold polygons; it holds a {kind or 'geometry without type'}.")
        self.transform = transform
        self.bounds = geometry_bounds(self.geometries)

    def window_mask(self, row, col, height, width):
        """bool (height, width): True where the pixel centre lies inside a polygon."""
        from rasterio.features import rasterize
        from rasterio.windows import Window, transform as window_transform

        out_transform = window_transform(Window(col, row, width, height), self.transform)
        return rasterize(((g, 1) for g in self.geometries), out_shape=(int(height), int(width)),
                         transform=out_transform, fill=0, dtype="uint8").astype(bool)

