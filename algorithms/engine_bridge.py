"""The one place where engine calls meet QGIS: progress, cancel, log, and errors as QgsProcessingException."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsProperty,
)

from .qgis_compat import NUMBER_INTEGER

__all__ = ["call_engine", "feedback_callbacks", "explain_invalid_parameters"]


def feedback_callbacks(feedback):
    """(progress, is_cancelled, log) callables for the engine, bound to a QgsProcessingFeedback."""

    def progress(percent, text):
        feedback.setProgress(percent)
        feedback.setProgressText(text)

    return progress, feedback.isCanceled, feedback.pushInfo


def call_engine(function, *args, **kwargs):
    """Run an engine function; its documented errors become one QgsProcessingException with the same text."""
    from ..engine.errors import UncertaintyError

    try:
        return function(*args, **kwargs)
    except UncertaintyError as e:
        raise QgsProcessingException(str(e)) from e


def explain_invalid_parameters(algorithm, parameters, context, message):
    """A message naming the problem and the fix for values QGIS's own ``checkParameterValues`` refused.

    QGIS says "Could not load source layer for INPUT: X not found" for a raster file that exists but is empty
    or corrupt, "Incorrect parameter value for N_SAMPLES" for a number out of range and "Incorrect parameter
    value for MODEL" for a file of another type. This returns, for the first such parameter, e.g. "INPUT raster
    X is empty (0 bytes). ..." or "N_SAMPLES: expected a whole number from 1 to 1000; got 1000000. ...";
    ``message`` (QGIS's text) when it finds nothing better. Meant for::

        def checkParameterValues(self, parameters, context):
            ok, message = super().checkParameterValues(parameters, context)
            return ok, (message if ok else explain_invalid_parameters(self, parameters, context, message))
    """
    for definition in algorithm.parameterDefinitions():
        name = definition.name()
        value = parameters.get(name)
        if isinstance(value, QgsProperty):
            value = value.staticValue()
        if value is None or value == "":
            continue
        if isinstance(definition, QgsProcessingParameterNumber):
            if not definition.checkValueIsAcceptable(value, context):
                kind = "a whole number" if definition.dataType() == NUMBER_INTEGER else "a number"
                low, high = definition.minimum(), definition.maximum()
                bounds = {(True, True): f" from {low:g} to {high:g}", (True, False): f" of at least {low:g}",
                          (False, True): f" of at most {high:g}", (False, False): ""}[(low > -1e300, high < 1e300)]
                return f"{name}: expected {kind}{bounds}; got {value!r}. Fix: give a value in that range."
        elif isinstance(definition, QgsProcessingParameterFile):
            if not definition.checkValueIsAcceptable(value, context):
                kind = (definition.fileFilter() or definition.extension() or "an existing file").replace(";;", " or ")
                return (f"{name}: expected {kind}; got {value!r}. Fix: choose a file of that type "
                        f"({definition.description()}).")
        elif isinstance(definition, QgsProcessingParameterRasterLayer) and isinstance(value, str):
            if QgsProcessingUtils.mapLayerFromString(value, context) is None:
                from ..engine.raster_io import describe_raster_problem

                problem = describe_raster_problem(value)
                if problem:
                    return problem
    return message
