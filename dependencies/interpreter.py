"""The Python interpreter that QGIS runs, as a program pip can be started with.

Inside QGIS ``sys.executable`` is often not Python: on Windows it is ``qgis-bin.exe`` (OSGeo4W and the
standalone installer keep ``python.exe`` in ``apps/Python3xx``, which is ``sys.exec_prefix``); in the macOS
bundle it is the ``QGIS`` binary (Python is ``Contents/MacOS/bin/python3``). Candidates are tried in order and
the first whose version and prefix equal this process's is used: starting a different Python would install
packages for the wrong ABI.
"""

import os
import shutil
# Bandit B404: asks candidate Pythons for their version, no shell.
import subprocess  # nosec B404
import sys
from pathlib import Path

from .errors import InstallError

__all__ = ["interpreter_candidates", "find_python"]

_PROBE = ("import sys; print(sys.version_info[0], sys.version_info[1], sys.version_info[2], sys.prefix, "
          "sys.base_prefix, sep='\\n')")


def _looks_like_python(path):
    name = Path(path).name.lower()
    return name.startswith("python") and not name.startswith("pythonw")


def _same(a, b):
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def interpreter_candidates(executable, exec_prefix, base_exec_prefix, version_info, system):
    """Paths to try, best first, for an interpreter described by these ``sys`` values (pure, no disk access)."""
    major, minor = version_info[0], version_info[1]
    out = []
    if executable and _looks_like_python(executable):
        out.append(str(executable))
    prefixes = [p for p in dict.fromkeys([exec_prefix, base_exec_prefix]) if p]
    if system == "Windows":
        for prefix in prefixes:
            out.append(str(Path(prefix) / "python.exe"))
        if executable:
            bin_dir = Path(executable).parent
            out += [str(bin_dir / "python3.exe"), str(bin_dir / "python.exe")]
    else:
        for prefix in prefixes:
            out += [str(Path(prefix) / "bin" / f"python{major}.{minor}"), str(Path(prefix) / "bin" / "python3")]
        if executable:
            out.append(str(Path(executable).parent / "bin" / "python3"))  # macOS QGIS.app/Contents/MacOS/bin
    return list(dict.fromkeys(out))


def find_python():
    """Path of an interpreter equal to this one (same version and base prefix), or :class:`InstallError`."""
    import platform

    candidates = interpreter_candidates(sys.executable, sys.exec_prefix, sys.base_exec_prefix, sys.version_info,
                                        platform.system())
    which = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}")
    if which:
        candidates.append(which)
    want = (sys.version_info[0], sys.version_info[1], sys.version_info[2])
    tried = []
    for candidate in candidates:
        if not os.path.isfile(candidate):
            continue
        try:
            # Bandit B603: a candidate interpreter path with a fixed -c probe, no shell.
            done = subprocess.run([candidate, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60)  # nosec B603
            major, minor, micro, prefix, base = done.stdout.strip().splitlines()
        except (OSError, subprocess.TimeoutExpired, ValueError) as e:
            tried.append(f"{candidate} ({e})")
            continue
        if (int(major), int(minor), int(micro)) == want and _same(prefix, sys.prefix) and _same(base, sys.base_prefix):
            return candidate  # same prefix too: a virtual environment's python would see other packages
        tried.append(f"{candidate} (Python {major}.{minor}.{micro} at {base})")
    raise InstallError(
        f"Cannot find the Python interpreter QGIS runs (Python {'.'.join(map(str, want))} at {sys.prefix}); "
        f"tried: {', '.join(tried) or ', '.join(candidates)}. Fix: install dependencies from a shell with that "
        "Python (README, 'From a shell')."
    )
