"""Run pip as a child process: its output line by line, progress from its own messages, cancel that kills it.

pip prints one line per step it takes for each package: ``Collecting X`` / ``Processing /path/X.whl`` (found),
``Downloading X.whl (N MB)``, ``Installing collected packages: a, b, c`` and ``Successfully installed ...``.
With the number of packages known from the dry run, progress is ``(found + downloaded) / (2·n)`` of the span
before installing, then the install step; pip gives no progress while it unpacks, so that step is reported as
one block. Cancel terminates pip's whole process group (POSIX) or process (Windows) within ``poll`` seconds.
"""

import os
import queue
import signal
# Bandit B404: runs pip with QGIS's Python, argument list, no shell.
import subprocess  # nosec B404
import threading

from .errors import InstallCancelled, InstallError

__all__ = ["run_pip", "PipProgress"]


class PipProgress:
    """Turns pip's lines into a fraction in [0, 1] for ``n_packages`` packages."""

    def __init__(self, n_packages):
        self.n = max(int(n_packages), 1)
        self.found = 0
        self.downloaded = 0
        self.installing = False
        self.done = False

    def feed(self, line):
        """Update from one line; returns a short text when the line starts a step worth showing, else None."""
        text = line.strip()
        if text.startswith(("Collecting ", "Processing ", "Obtaining ")):
            self.found += 1
            return text
        if text.startswith(("Downloading ", "Using cached ")):
            self.downloaded += 1
            return text
        if text.startswith("Installing collected packages"):
            self.installing = True
            return "Installing (unpacking) collected packages"
        if text.startswith("Successfully installed"):
            self.done = True
            return "pip finished"
        return None

    @property
    def fraction(self):
        if self.done:
            return 1.0
        if self.installing:
            return 0.5
        return 0.5 * min(1.0, (self.found + self.downloaded) / (2.0 * self.n))


def _kill(process):
    if process.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.terminate()
        process.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        if os.name == "posix":
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except OSError:
                pass
        else:
            process.kill()
        process.wait(timeout=10)


def run_pip(args, *, python, env, on_line=None, is_cancelled=None, poll=0.2, on_start=None):
    """Run ``python -m pip *args``; every output line goes to ``on_line``; returns the full output.

    Raises :class:`InstallCancelled` after killing pip when ``is_cancelled()`` turns true, and
    :class:`InstallError` with the last lines of output when pip fails. ``on_start(pid)`` is called once pip runs.
    """
    command = [python, "-m", "pip", *args]
    options = {"start_new_session": True} if os.name == "posix" else \
        {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    try:
        # Bandit B603: pip with the plugin's pinned requirements, argument list, no shell.
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,  # nosec B603
                                   encoding="utf-8", errors="replace", bufsize=1, **options)
    except OSError as e:
        raise InstallError(f"Cannot start pip with {python}: {e}. Fix: install pip for QGIS's Python.") from e
    if on_start:
        on_start(process.pid)
    lines = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    output, finished = [], False
    try:
        while not finished:
            if is_cancelled is not None and is_cancelled():
                _kill(process)
                raise InstallCancelled("Cancelled: pip was stopped; the previous installation is unchanged.")
            try:
                line = lines.get(timeout=poll)
            except queue.Empty:
                continue
            while line is not None:
                output.append(line)
                if on_line:
                    on_line(line)
                try:
                    line = lines.get_nowait()
                except queue.Empty:
                    break
            else:
                finished = True
        process.wait()
    finally:
        _kill(process)
        process.stdout.close()
    if process.returncode != 0:
        tail = "\n".join(output[-15:])
        raise InstallError(f"pip failed (exit status {process.returncode}):\n{tail}")
    return "\n".join(output)

