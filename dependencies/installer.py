"""Install the plugin's Python packages into a folder it owns, never touching what QGIS's Python provides.

Layout under ``root`` (``<QGIS profile>/seg_uncertainty/python``)::

    active.json              {"env": "env-20261123T140501-cuda"}, replaced atomically (temp file + rename)
    env-<time>-<variant>/
        site/                packages QGIS's Python does not have; appended to sys.path (behind QGIS's own)
        overrides/           packages QGIS's Python has in a version too old for torch and that QGIS does not
                             use (e.g. Debian 12's sympy 1.11 for torch 2.14's sympy>=1.13.3); put first
        manifest.json        what was installed, from which variant, the proof of what stayed unchanged

Steps of :func:`install`: find the interpreter; snapshot QGIS's Python in a fresh process (every distribution
with version, location and a fingerprint of its files); choose the torch variant; resolve with
``pip install --dry-run --report`` against QGIS's Python with a constraint ``name==version`` for every
*protected* distribution (the QGIS stack and every distribution QGIS has loaded); install exactly the resolved
pins with ``--no-deps`` into a new staging folder; re-probe a fresh process with the new folders on the path:
every protected distribution must have the same version and the same files, numpy/GDAL/rasterio/PyQt must
import from the same files, torch must import and run a model; then switch ``active.json`` to the new folder.
Any failure or cancel deletes the staging folder; the previous installation stays active.
"""

import hashlib
import importlib
import json
import os
import platform
import shutil
# Bandit B404: runs the interpreter QGIS uses, fixed arguments, no shell.
import subprocess  # nosec B404
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InstallCancelled, InstallError
from .gpu import probe_nvidia_gpus
from .interpreter import find_python
from .pip_runner import PipProgress, run_pip
from .variants import PlatformFacts, choose_variant

__all__ = [
    "CORE_DISTRIBUTIONS", "CHECKED_MODULES", "InstallRequest", "InstallResult", "dependency_root",
    "active_environment", "activate", "read_requirements", "host_path", "probe_python", "protected_names",
    "install",
]

# Never installed, upgraded or shadowed, whether or not QGIS has loaded them yet.
CORE_DISTRIBUTIONS = (
    "numpy", "gdal", "rasterio", "pyqt5", "pyqt5-sip", "pyqt6", "pyqt6-sip", "sip", "qscintilla", "qgis",
    "pyproj", "shapely", "fiona", "scipy", "matplotlib", "pandas", "owslib", "psycopg2", "pyyaml", "jinja2",
    "pygments", "requests", "urllib3", "lxml", "pillow", "python-dateutil", "six", "certifi", "pip",
)
CHECKED_MODULES = ("numpy", "osgeo.gdal", "rasterio", "qgis.PyQt.QtCore")
_PROBE_SCRIPT = str(Path(__file__).resolve().parent / "probe.py")


def _norm(name):
    return name.lower().replace("_", "-").replace(".", "-")


def dependency_root(profile_dir):
    """The folder the plugin owns inside a QGIS profile folder (``QgsApplication.qgisSettingsDirPath()``)."""
    return Path(profile_dir) / "seg_uncertainty" / "python"


def active_environment(root):
    """(env folder, manifest dict) of the active installation, or (None, None)."""
    try:
        name = json.loads((Path(root) / "active.json").read_text(encoding="utf-8"))["env"]
        env = Path(root) / name
        return env, json.loads((env / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def activate(root, path=None):
    """Put the active installation on ``path`` (default ``sys.path``): ``site`` appended, ``overrides`` first.

    Idempotent; returns the folders added. Folders of other installations under ``root`` are removed from
    ``path`` so that a switch in this process does not leave the old one visible.
    """
    path = sys.path if path is None else path
    env, _ = active_environment(root)
    root_str = os.path.normcase(str(Path(root).resolve()))
    keep = [p for p in path if not (p and os.path.normcase(str(Path(p).resolve())).startswith(root_str))]
    added = []
    if env is not None:
        site, overrides = str(env / "site"), str(env / "overrides")
        if os.path.isdir(overrides) and os.listdir(overrides):
            keep.insert(0, overrides)
            added.append(overrides)
        if os.path.isdir(site):
            keep.append(site)
            added.append(site)
    path[:] = keep
    importlib.invalidate_caches()
    return added


def read_requirements(path):
    """Requirement lines of a requirements file, without comments and blank lines."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def host_path(root):
    """QGIS's own ``sys.path``: this process's path without the plugin's installation folders."""
    root_str = os.path.normcase(str(Path(root).resolve()))
    return [p for p in sys.path if p and not os.path.normcase(str(Path(p).resolve())).startswith(root_str)]


def probe_python(python, path, *, fingerprint=(), modules=(), smoke=False, env=None):
    """Run :mod:`.probe` in a fresh ``python`` with ``sys.path = path``; its JSON answer as a dict."""
    with tempfile.TemporaryDirectory(prefix="seg_unc_probe_") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"path": list(path), "fingerprint": list(fingerprint),
                                      "modules": list(modules), "smoke": smoke}), encoding="utf-8")
        # Bandit B603: QGIS's own Python with the plugin's probe script, no shell.
        done = subprocess.run([python, "-I", _PROBE_SCRIPT, str(config)], capture_output=True, text=True,  # nosec B603
                              timeout=600, env=env)
    marker = done.stdout.rfind("@@PROBE@@")
    if done.returncode != 0 or marker < 0:
        raise InstallError(f"Could not inspect QGIS's Python with {python}: {(done.stderr or done.stdout)[-800:]}")
    return json.loads(done.stdout[marker + len("@@PROBE@@"):])


def protected_names(importable):
    """Normalised names of distributions never to touch: the QGIS stack and whatever QGIS has loaded."""
    loaded = set()
    try:
        import importlib.metadata as metadata

        owners = metadata.packages_distributions()
        for module in list(sys.modules):
            if module.startswith("_distutils_hack"):
                continue  # setuptools' shim, imported by a .pth at every start: not a use of setuptools
            for dist in owners.get(module.split(".", 1)[0], ()):
                loaded.add(_norm(dist))
    except (ImportError, AttributeError):  # Python < 3.10: the core list only
        pass
    return sorted((set(CORE_DISTRIBUTIONS) | loaded) & set(importable))


@dataclass
class InstallRequest:
    requirements: Path
    variant: str = "auto"
    index_url: str = ""
    force: bool = False


@dataclass
class InstallResult:
    status: str  # "installed" or "already"
    message: str
    environment: Path = None
    seconds: float = 0.0
    size_bytes: int = 0
    packages: list = field(default_factory=list)
    overrides: list = field(default_factory=list)
    variant: str = ""
    warning: str = ""


def _folder_size(folder):
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink())


def _pip_env(path, staging):
    """pip's environment: QGIS's path only, and its temporary files inside ``staging`` (a killed pip leaves
    gigabytes of unpacked wheels in its temporary folder; they go away with the staging folder)."""
    env = dict(os.environ)
    temporary = Path(staging) / "tmp"
    temporary.mkdir(exist_ok=True)
    for name in ("TMPDIR", "TEMP", "TMP"):
        env[name] = str(temporary)
    env["PYTHONPATH"] = os.pathsep.join(path)
    env["PYTHONNOUSERSITE"] = "1"  # the user site, if QGIS sees it, is already in ``path``
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    return env


def _explain_resolution(error, protected):
    text = str(error)
    if "ResolutionImpossible" in text or "conflicting dependencies" in text:
        return InstallError(
            "The pinned packages need a version of a package that QGIS's Python already provides and the plugin "
            f"never changes ({', '.join(protected[:8])}{', ...' if len(protected) > 8 else ''}). pip said:\n"
            f"{text}\nFix: use a QGIS whose Python has a version these packages accept, or a pin in "
            "requirements.txt that accepts QGIS's version."
        )
    return error


def install(root, request, *, log=print, progress=None, is_cancelled=None):
    """Install ``request`` under ``root`` (see the module docstring); an :class:`InstallResult`.

    ``log(text)`` receives every pip line and each step; ``progress(percent, text)`` the progress;
    ``is_cancelled()`` is polled while pip runs.
    """
    started = time.monotonic()
    progress = progress or (lambda percent, text: None)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    requirements = read_requirements(request.requirements)
    facts = PlatformFacts(platform.system(), platform.machine())
    probe = probe_nvidia_gpus(facts.system)
    variant = choose_variant(request.variant, facts, probe, request.index_url)
    log(f"Torch variant: {variant.describe()}")
    if variant.warning:
        log(f"Warning: {variant.warning}")
    wanted = {"requirements": requirements, "variant": variant.variant, "channel": variant.channel,
              "python": platform.python_version()}
    env_dir, manifest = active_environment(root)
    if not request.force and manifest and all(manifest.get(k) == v for k, v in wanted.items()):
        return InstallResult("already", f"Already installed and matching: {env_dir}. Nothing to do.",
                             env_dir, time.monotonic() - started, variant=variant.variant, warning=variant.warning,
                             packages=manifest.get("packages", []), overrides=manifest.get("overrides", []))

    python = find_python()
    log(f"QGIS's Python: {python}")
    path = host_path(root)
    progress(2, "Inspecting QGIS's Python")
    before = probe_python(python, path)
    protected = protected_names(before["dists"])
    before = probe_python(python, path, fingerprint=protected, modules=CHECKED_MODULES)
    pins = {k: before["dists"][k]["version"] for k in protected}
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        constraints = staging / "qgis-constraints.txt"
        constraints.write_text("".join(f"{before['dists'][k]['name']}=={v}\n" for k, v in pins.items()),
                               encoding="utf-8")
        index_args = ["--extra-index-url", variant.extra_index_url] if variant.extra_index_url else []
        progress(5, "Resolving the packages (pip --dry-run)")
        report = staging / "report.json"
        try:
            run_pip(["install", "--dry-run", "--report", str(report), "--prefix", str(staging / "dry"),
                     "--progress-bar", "off", "-r", str(request.requirements), "-c", str(constraints), *index_args],
                    python=python, env=_pip_env(path, staging), on_line=log, is_cancelled=is_cancelled)
        except InstallError as e:
            raise _explain_resolution(e, protected) from e
        plan = [(item["metadata"]["name"], item["metadata"]["version"])
                for item in json.loads(report.read_text(encoding="utf-8")).get("install", [])]
        if not plan:
            shutil.rmtree(staging, ignore_errors=True)
            return InstallResult("already", "Already satisfied by QGIS's own Python: nothing to install.",
                                 None, time.monotonic() - started, variant=variant.variant, warning=variant.warning)
        bad = [f"{n}=={v}" for n, v in plan if _norm(n) in protected]
        if bad:
            raise InstallError(f"Refusing to install {', '.join(bad)}: QGIS provides these and the plugin never "
                               "changes them. Fix: a requirements.txt pin that accepts QGIS's version.")
        overrides = [(n, v) for n, v in plan if _norm(n) in before["dists"]]
        fresh = [(n, v) for n, v in plan if _norm(n) not in before["dists"]]
        for name, version in overrides:
            log(f"QGIS's Python has {name} {before['dists'][_norm(name)]['version']}, too old for the pinned "
                f"packages and not used by QGIS: {name} {version} is installed in the plugin's overrides folder.")
        counter = PipProgress(len(plan))

        def on_line(line):
            log(line)
            step = counter.feed(line)
            if step:
                progress(10 + 70 * counter.fraction, step[:120])

        for folder, items in (("site", fresh), ("overrides", overrides)):
            if not items:
                continue
            pin_file = staging / f"{folder}-pins.txt"
            pin_file.write_text("".join(f"{n}=={v}\n" for n, v in items), encoding="utf-8")
            run_pip(["install", "--no-deps", "--target", str(staging / folder), "--progress-bar", "off",
                     "--no-warn-script-location", "-r", str(pin_file), "-c", str(constraints), *index_args],
                    python=python, env=_pip_env(path, staging), on_line=on_line, is_cancelled=is_cancelled)
        progress(85, "Checking that QGIS's packages are unchanged and torch works")
        new_path = [str(staging / "overrides")] + path + [str(staging / "site")]
        after = probe_python(python, new_path, fingerprint=protected, modules=CHECKED_MODULES, smoke=True)
        proof = _prove_unchanged(before, after, protected)
        if "error" in after.get("smoke", {}):
            raise InstallError(f"The installed packages do not work in QGIS's Python: {after['smoke']['error']}. "
                               "Nothing was switched; the previous installation stays active.")
        if is_cancelled is not None and is_cancelled():
            raise InstallCancelled("Cancelled before switching; the previous installation is unchanged.")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = root / f"env-{stamp}-{variant.variant}"
        for leftover in ("dry", "tmp"):
            shutil.rmtree(staging / leftover, ignore_errors=True)
        (staging / "report.json").unlink(missing_ok=True)
        manifest = dict(wanted, packages=[f"{n}=={v}" for n, v in fresh],
                        overrides=[f"{n}=={v}" for n, v in overrides], protected=pins, proof=proof,
                        installed_at=stamp, torch=after["modules"].get("torch"))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _switch(root, target)
    size = _folder_size(target)
    return InstallResult("installed", f"Installed {len(plan)} packages into {target} ({size / 2**30:.2f} GiB); "
                         "QGIS's own packages are unchanged (versions and files checked).", target,
                         time.monotonic() - started, size, manifest["packages"], manifest["overrides"],
                         variant.variant, variant.warning)


def _prove_unchanged(before, after, protected):
    """The versions and file fingerprints of ``protected`` and the checked modules, equal before and after."""
    changed = []
    for key in protected:
        a, b = before["dists"].get(key, {}), after["dists"].get(key, {})
        for what in ("version", "location", "sha256", "files"):
            if a.get(what) != b.get(what):
                changed.append(f"{a.get('name', key)} {what}: {a.get(what)} -> {b.get(what)}")
    for module, facts in before["modules"].items():
        if facts != after["modules"].get(module):
            changed.append(f"module {module}: {facts} -> {after['modules'].get(module)}")
    if changed:
        raise InstallError("Refusing to switch: the new packages would change what QGIS's Python imports: "
                           + "; ".join(changed) + ". Nothing was switched; the previous installation stays active.")
    digest = hashlib.sha256(json.dumps([before["dists"][k] for k in protected], sort_keys=True).encode()).hexdigest()
    return {"distributions": len(protected), "sha256": digest, "modules": before["modules"]}


def _switch(root, target):
    """Point ``active.json`` at ``target`` (atomic rename), then remove older installations where possible."""
    pointer = Path(root) / "active.json"
    temporary = pointer.with_suffix(".json.tmp")
    temporary.write_text(json.dumps({"env": target.name}), encoding="utf-8")
    os.replace(temporary, pointer)
    for old in Path(root).glob("env-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)  # files in use (Windows) stay until the next install
