"""CPU thread behaviour that degrades gracefully on a shared machine.

torch's CPU kernels run on OpenMP threads (GNU libgomp in the wheels), one per core by default. Between
parallel regions libgomp threads *spin* (busy-wait) before sleeping. When another process keeps a core busy,
a spinning thread steals time from the one that still has work, every parallel region waits for a descheduled
thread, and a run can slow down many times over (measured with ``make bench``'s ``threads`` suite on a 2-core
machine under load: FPN-ResNet18 T = 1 took 31.7 s with torch's defaults against 13.2 s with
``OMP_WAIT_POLICY=PASSIVE`` and 8.8 s with one thread; see README "Threads").

The engine therefore asks OpenMP to sleep at barriers (``OMP_WAIT_POLICY=PASSIVE``) unless the user set a
policy. OpenMP reads it once, when torch's library loads, so :func:`configure_openmp` runs when the engine
package is imported, before any engine module imports torch; if torch was already loaded by someone else (for
example another plugin), the setting has no effect and torch's own behaviour applies. The thread count is left
to torch (one per core) so that a quiet machine keeps its speed; set ``OMP_NUM_THREADS`` to change it.
``SEG_UNCERTAINTY_THREADS=torch`` leaves everything to torch (used by the benchmark for comparison).

The thread count and wait policy do not change results: one run gives the same pixels whatever they are.
"""

import os
import sys

__all__ = ["configure_openmp"]


def configure_openmp(environ=os.environ):
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless set already, torch is loaded, or SEG_UNCERTAINTY_THREADS=torch.

    Returns the policy in effect for a torch loaded after this call (None when left to the defaults).
    """
    if environ.get("SEG_UNCERTAINTY_THREADS", "").lower() == "torch" or "torch" in sys.modules:
        return environ.get("OMP_WAIT_POLICY")
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return environ["OMP_WAIT_POLICY"]
