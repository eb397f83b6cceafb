"""Render rasters to PNG with QGIS's own map renderer, each in the style of its side-car ``.qml``.

Usage::

    QT_QPA_PLATFORM=offscreen python scripts/render_outputs.py OUT_PNG_DIR RASTER [RASTER ...]

For every RASTER: load it as a ``QgsRasterLayer``, apply ``<raster without suffix>.qml`` when it exists
(``loadDefaultStyle``; the segmentation algorithms write one beside each output), otherwise keep QGIS's default
renderer (an RGB scene shows as a multiband colour composite), render the layer's full extent in its own CRS
with ``QgsMapRendererSequentialJob`` and save ``OUT_PNG_DIR/<raster stem>.png``. The image is ``--width``
pixels wide (default 800) and as high as the extent's aspect ratio asks; NoData shows the background (white,
or transparent with ``--transparent``). When two rasters share a stem (``resources/demo/demo_scene.tif`` and
``demo_output/demo_scene.tif``), each of them is named ``<parent folder>_<stem>.png`` instead.

Writes nothing beside the rasters (GDAL's ``.aux.xml`` statistics files are switched off unless
``GDAL_PAM_ENABLED`` is set). Prints one written path per line; exits with status 1 if a raster cannot be
loaded or rendered (the others are still rendered). Runs with the system Python or the development venv
(which sees the system's QGIS).
"""

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

__all__ = ["render_raster", "png_names", "main"]

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Rendering computes band statistics; without this GDAL saves them as <raster>.aux.xml beside each input,
# e.g. inside resources/demo/ of the plugin.
os.environ.setdefault("GDAL_PAM_ENABLED", "NO")


def png_names(rasters, out_dir):
    """PNG path for each raster: ``<stem>.png``, or ``<parent>_<stem>.png`` for stems given more than once.

    >>> [p.name for p in png_names([Path("a/x.tif"), Path("b/x.tif"), Path("b/y.tif")], Path("o"))]
    ['a_x.png', 'b_x.png', 'y.png']
    """
    counts = Counter(Path(r).stem for r in rasters)
    names = []
    for raster in rasters:
        raster = Path(raster)
        stem = raster.stem
        if counts[stem] > 1:
            stem = f"{raster.resolve().parent.name}_{stem}"
        names.append(Path(out_dir) / f"{stem}.png")
    return names


def render_raster(raster, png, width=800, transparent=False):
    """Render ``raster`` in its side-car style into ``png``; returns ``(png, style note)``.

    Raises ``RuntimeError`` when QGIS cannot load the raster or the image cannot be saved.
    """
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtGui import QColor

    layer = QgsRasterLayer(str(raster), Path(raster).stem)
    if not layer.isValid():
        reason = layer.error().summary().strip().rstrip(":").strip() or "no reason given"
        raise RuntimeError(f"{raster}: QGIS cannot load it as a raster ({reason})")
    qml = Path(raster).with_suffix(".qml")
    if qml.exists():
        message, ok = layer.loadDefaultStyle()
        if not ok:
            raise RuntimeError(f"{raster}: its style {qml} cannot be applied ({message})")
        note = f"style {qml.name}"
    else:
        note = f"default style ({type(layer.renderer()).__name__})"

    extent = layer.extent()
    height = max(1, round(width * extent.height() / extent.width()))
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(width, height))
    settings.setBackgroundColor(QColor(Qt.GlobalColor.transparent) if transparent else QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    errors = [f"{e.layerID}: {e.message}" for e in job.errors()]
    if errors:
        raise RuntimeError(f"{raster}: rendering failed ({'; '.join(errors)})")
    image = job.renderedImage()
    png.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(png), "PNG"):
        raise RuntimeError(f"{raster}: cannot write {png}")
    return png, f"{note}, {image.width()}x{image.height()} px"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, metavar="OUT_PNG_DIR")
    parser.add_argument("rasters", type=Path, nargs="+", metavar="RASTER")
    parser.add_argument("--width", type=int, default=800, help="image width in pixels (default 800)")
    parser.add_argument("--transparent", action="store_true", help="transparent instead of white background")
    args = parser.parse_args(argv)
    if args.width < 1:
        parser.error(f"--width: expected a whole number >= 1; got {args.width}")

    from qgis.core import QgsApplication

    app = QgsApplication.instance()
    own_app = app is None
    if own_app:
        QgsApplication.setPrefixPath("/usr", True)
        app = QgsApplication([], False)
        app.initQgis()
    status = 0
    try:
        for raster, png in zip(args.rasters, png_names(args.rasters, args.out_dir)):
            try:
                path, note = render_raster(raster, png, args.width, args.transparent)
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                status = 1
                continue
            print(f"{path}  ({raster}: {note})")
    finally:
        if own_app:
            app.exitQgis()
    return status


if __name__ == "__main__":
    sys.exit(main())
