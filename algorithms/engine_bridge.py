"""The one place where engine calls meet QGIS: progress, cancel, log, and errors as QgsProcessingException."""

from qgis.core import QgsProcessingException

__all__ = ["call_engine", "feedback_callbacks"]


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
