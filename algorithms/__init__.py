"""Processing algorithms: thin QGIS wrappers around :mod:`seg_uncertainty.engine`."""
