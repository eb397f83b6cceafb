"""Build the installable plugin ZIP: one top folder ``seg_uncertainty``, no tests, benchmarks or build files.

Usage: python3 scripts/package.py dist/seg_uncertainty.zip (files come from ``git ls-files``).
"""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXCLUDED_TOP = {"tests", "benchmarks", "scripts", ".ci", "build", "dist", "docs", ".venv", "demo_output"}
EXCLUDED_FILES = {"Makefile", ".gitignore"}


def plugin_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for name in listed.splitlines():
        path = Path(name)
        if path.parts[0] in EXCLUDED_TOP or name in EXCLUDED_FILES or path.suffix == ".pyc":
            continue
        yield path


def main(destination):
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in plugin_files():
            archive.write(ROOT / path, Path("seg_uncertainty") / path)
    print(destination)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dist/seg_uncertainty.zip")
