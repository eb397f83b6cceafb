"""Keep the C heap from growing with the raster: free heap pages go back to the system between column panels.

A run allocates and frees strips, merge rows and tiles of a few MiB over and over, panel after panel, from
several threads (torch's, the reader's, the writer's). glibc's malloc serves allocations above its mmap
threshold with their own ``mmap``; below it, from heaps (one per thread that allocates, "arenas") that are only
trimmed from the top. The threshold is dynamic: every freed mmapped block raises it (up to 32 MiB), so after the
first tiles almost everything comes from the heaps, which fragment, and the resident memory grew with the
number of panels, that is with the raster's width.

Two cures were measured (FPN-ResNet18 on 9 tiles of 512 px, T = 1, quiet 2-core machine):

- fixing the threshold low (``mallopt(M_MMAP_THRESHOLD, 4 MiB)``) keeps memory flat but makes the model itself
  40-60 % slower (3.5-4.9 s → 5.5-7.5 s): every activation of a few MiB is then mapped, page-faulted and
  unmapped at every layer of every tile;
- **trimming**: :func:`release_free_memory` (``malloc_trim(0)``) after each panel hands every free page of every
  arena back to the system (``madvise``), whatever its place in the heap. It costs milliseconds per panel and
  nothing per allocation, and the model keeps the speed of the dynamic threshold. This is what a run does.

Elsewhere than glibc nothing is done. Results never depend on it.
"""

import ctypes
import ctypes.util
import sys
import threading

__all__ = ["release_free_memory"]

_libc = []
_lock = threading.Lock()


def _glibc():
    with _lock:
        if not _libc:
            lib = None
            if sys.platform.startswith("linux"):
                try:
                    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    lib.malloc_trim  # noqa: B018 - glibc only
                except (OSError, AttributeError):
                    lib = None
            _libc.append(lib)
        return _libc[0]


def release_free_memory():
    """Return the heaps' free pages to the system (glibc ``malloc_trim(0)``); True when something was released."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
