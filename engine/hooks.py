"""What a long engine call tells its caller and asks it: progress, cancel, log, in one object.

The engine counts work as (done, total) and reports it through :meth:`RunHooks.advance`; the caller's callback
sees the unit it asked for: a percent in [0, 100] (:func:`engine.inference.predict_uncertainty`,
``progress(percent, text)``) or a fraction in [0, 1] (:func:`engine.evaluation.evaluate_rasters`,
``progress(fraction, text)``). Cancel is checked with :meth:`RunHooks.check_cancel`, which raises
:class:`~engine.errors.InferenceCancelled`; callers check it before every tile or strip, so a cancel stops within
one tile.
"""

from typing import Callable, Optional

from .errors import InferenceCancelled

__all__ = ["RunHooks", "PERCENT", "FRACTION"]

#: Progress units: the value handed to ``progress`` for all the work done.
PERCENT = 100.0
FRACTION = 1.0


class RunHooks:
    """``progress(value, text)``, ``is_cancelled() -> bool`` and ``log(text)``, each optional.

    ``unit`` is what ``progress`` receives when all the work is done (:data:`PERCENT` or :data:`FRACTION`);
    ``done / total`` of it is reported as ``unit * done / total`` (``done / total`` for fractions).
    """

    def __init__(
        self,
        progress: Optional[Callable[[float, str], None]] = None,
        is_cancelled: Optional[Callable[[], bool]] = None,
        log: Optional[Callable[[str], None]] = None,
        *,
        unit: float = PERCENT,
    ):
        self._progress = progress
        self._is_cancelled = is_cancelled
        self._log = log
        self.unit = unit

    def advance(self, done: int, total: int, text: str) -> None:
        """Report ``done`` of ``total`` units of work."""
        if self._progress is not None:
            value = done / total if self.unit == FRACTION else self.unit * done / total
            self._progress(value, text)

    def cancelled(self) -> bool:
        return self._is_cancelled is not None and bool(self._is_cancelled())

    def check_cancel(self, message: str = "Cancelled by the user.") -> None:
        """Raise :class:`InferenceCancelled` with ``message`` when the caller asked to stop."""
        if self.cancelled():
            raise InferenceCancelled(message)

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log(text)
