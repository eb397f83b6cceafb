"""Numbers and names shared by the engine and the QGIS algorithms; import them, never retype them.

No torch, no QGIS: the algorithms import this module to declare their parameter ranges.
"""

__all__ = ["ENGINE_VERSION", "MAX_SAMPLES", "CLASS_NODATA"]

#: Written into every output's tags as SEG_UNCERTAINTY_VERSION; the plugin's metadata.txt version.
ENGINE_VERSION = "0.1.0"
#: Upper bound of N_SAMPLES (MC passes per view).
MAX_SAMPLES = 1000
#: NoData value of the uint8 class raster.
CLASS_NODATA = 255
