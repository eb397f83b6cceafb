"""Keep model calls in other threads away from a torch.fx trace in progress.

While it traces, ``torch.fx`` replaces ``torch.nn.Module.__call__`` (and ``__getattr__``) for the whole process;
a model called from another thread at that moment (QGIS runs algorithms as parallel background tasks) goes
through the tracer and fails, and two traces at once can leave the patch in place for good. Model calls take
this lock shared (:func:`model_calls`, many at once), a trace takes it exclusive (:func:`tracing`).
"""

import contextlib
import threading

__all__ = ["model_calls", "tracing"]

_condition = threading.Condition()
_state = {"calls": 0, "tracing": False}
_local = threading.local()


@contextlib.contextmanager
def model_calls():
    """Shared: any number of threads may run models; waits while a trace runs (re-entrant per thread)."""
    depth = getattr(_local, "depth", 0)
    if depth == 0:
        with _condition:
            _condition.wait_for(lambda: not _state["tracing"])
            _state["calls"] += 1
    _local.depth = depth + 1
    try:
        yield
    finally:
        _local.depth = depth
        if depth == 0:
            with _condition:
                _state["calls"] -= 1
                _condition.notify_all()


@contextlib.contextmanager
def tracing():
    """Exclusive: waits until no model runs in any thread, and holds every model call off until done."""
    with _condition:
        _condition.wait_for(lambda: not _state["tracing"] and _state["calls"] == 0)
        _state["tracing"] = True
    try:
        yield
    finally:
        with _condition:
            _state["tracing"] = False
            _condition.notify_all()
