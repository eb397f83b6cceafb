"""Run by tests/test_install_dependencies.py with QGIS's own Python (no virtual environment): starts
``uncertainty:install_dependencies`` (FORCE) through ``processing.run`` and cancels its feedback a few seconds
after pip has started installing. Prints JSON: the error text, pip's process id and whether it still runs."""

import json
import os
import sys
import threading
import time
from pathlib import Path


def _parent(pid):
    """The parent process id of ``pid`` (0 once it is gone); the name in /proc/PID/stat may hold spaces."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _descends_from_us(pid):
    me = os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if pid == me:
            return True
    return False


def _running_child(pid):
    """Still running (not a zombie) and still ours: a reaped pip's number may already belong to another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z" and _descends_from_us(pid)


def _pip_pids(root):
    """pip processes started by this process. /proc is shared with every other test suite on the machine (the
    version matrix runs Debian roots side by side, whose temporary profile paths can be the same string), so a
    pip is ours only if this process is among its ancestors."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (" -m pip install " in cmdline and "--target" in cmdline and str(root) in cmdline
                    and _descends_from_us(int(entry.name))):
                pids.append(int(entry.name))
    return pids


def main(plugin_dir, seconds_after_start):
    from qgis.core import QgsApplication, QgsProcessingFeedback

    QgsApplication.setPrefixPath("/usr", True)
    app = QgsApplication([], False)
    app.initQgis()
    sys.path[:0] = [plugin_dir, "/usr/share/qgis/python/plugins"]
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing
    import seg_uncertainty
    from seg_uncertainty.algorithms.install_dependencies import plugin_dependency_root

    plugin = seg_uncertainty.classFactory(None)
    plugin.initProcessing()
    root = plugin_dependency_root()
    feedback = QgsProcessingFeedback()
    seen = []

    def watch():
        while not seen:
            seen.extend(_pip_pids(root))
            time.sleep(0.2)
        time.sleep(seconds_after_start)
        feedback.cancel()

    threading.Thread(target=watch, daemon=True).start()
    try:
        processing.run("uncertainty:install_dependencies", {"FORCE": True}, feedback=feedback)
        outcome = "finished"
    except Exception as e:  # noqa: BLE001 - the error is what the test checks
        outcome = str(e)
    # pip's process group was signalled; on a loaded machine the kernel may take a moment to tear it down.
    deadline = time.monotonic() + 15
    while True:
        alive = [pid for pid in seen if _running_child(pid)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print("@@RESULT@@" + json.dumps({"outcome": outcome, "pip_pids": seen, "alive": alive,
                                     "log": feedback.textLog()[-2000:] if hasattr(feedback, "textLog") else ""}))
    plugin.unload()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
