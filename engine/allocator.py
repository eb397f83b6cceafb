"""Keep the C heap from growing with the raster: large buffers go straight back to the system.

glibc's malloc serves an allocation above a threshold with its own ``mmap`` and returns it with ``munmap`` when
freed; below it, from heaps that are only trimmed from the top. The threshold is *dynamic*: every freed mmapped
block raises it to that block's size (up to 32 MiB). A run allocates and frees strips, merge rows and tiles of a
few MiB over and over, panel after panel; once the threshold has risen they come from the heaps, fragment them,
and the process's resident memory grew with the number of panels, that is with the raster's width (measured at
512 rows, one warm run each: 784 MB at 2,048 px wide, 940 MB at 16,384; with the threshold fixed at 4 MiB,
717, 828 and 885 MB at 2,048, 16,384 and 65,536).

:func:`fix_mmap_threshold` fixes the threshold at :data:`MMAP_THRESHOLD` (``mallopt(M_MMAP_THRESHOLD)``, which
also turns the dynamic adjustment off) the first time a run starts. It is process-wide and stays in force; it
changes where big blocks come from, never results. Elsewhere than glibc (or when the user set
``MALLOC_MMAP_THRESHOLD_``) nothing is done.
"""

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

#: Allocations of at least this many bytes are mmapped and unmapped when freed.
MMAP_THRESHOLD = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_done = []
_lock = threading.Lock()


def fix_mmap_threshold():
    """Fix glibc's mmap threshold once per process; returns True when it is (or was already) fixed here."""
    with _lock:
        if _done:
            return _done[0]
        ok = False
        if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
            except (OSError, AttributeError):  # not glibc
                ok = False
        _done.append(ok)
        return ok
