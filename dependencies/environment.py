"""What the plugin sees: versions and locations of its packages, the GPU, and which device ``auto`` picks.

:func:`gpu_unused_warning` is the one sentence shown when an NVIDIA GPU is present but the installed torch cannot
use it (a CPU-only build, or a CUDA build newer than the driver): the environment report shows it, and every
inference run logs it (``algorithms/segmentation_base.py`` calls it once per run; the answer is cached per
process, so the cost is one ``nvidia-smi`` call per QGIS session).
"""

import functools
import html
import importlib
import platform
import sys

from .gpu import probe_nvidia_gpus

__all__ = ["PACKAGES", "package_facts", "torch_facts", "gpu_unused_warning", "environment_report", "report_html"]

# (label, module to import)
PACKAGES = (("numpy", "numpy"), ("GDAL", "osgeo.gdal"), ("rasterio", "rasterio"), ("torch", "torch"),
            ("torchvision", "torchvision"), ("segmentation-models-pytorch", "segmentation_models_pytorch"))


def package_facts(module_name):
    """{"version": ..., "location": ...}; version "missing" when it cannot be imported (error says why)."""
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - a broken install is reported, not raised
        missing = isinstance(e, ModuleNotFoundError) and e.name == module_name.split(".")[0]
        return {"version": "missing", "location": "", "error": "" if missing else f"{type(e).__name__}: {e}"}
    version = getattr(module, "__version__", None)
    return {"version": str(version) if version is not None else "unknown",
            "location": getattr(module, "__file__", "") or ""}


@functools.lru_cache(maxsize=1)
def _nvidia_probe():
    return probe_nvidia_gpus(platform.system())


def torch_facts():
    """CUDA/MPS availability and devices as torch sees them; ``{"installed": False}`` without torch."""
    try:
        import torch
    except Exception:  # noqa: BLE001
        return {"installed": False}
    devices = []
    cuda = bool(torch.cuda.is_available())
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append({"device": f"cuda:{index}", "name": props.name,
                            "memory_gib": round(props.total_memory / 2**30, 2)})
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda or "none (CPU-only)",
            "cuda_available": cuda, "mps_available": mps, "devices": devices}


def _auto_choice(facts, probe):
    """(device, why) as ``engine.model_loading.resolve_device("auto")`` decides: CUDA if torch can use it."""
    if not facts.get("installed"):
        return "none", "torch is missing: run uncertainty:install_dependencies"
    if facts["cuda_available"]:
        first = facts["devices"][0]
        return "cuda", f"torch can use CUDA; the first GPU is {first['name']} ({first['memory_gib']} GiB)"
    why = "torch sees no CUDA GPU"
    if probe.gpus:
        why += " although nvidia-smi lists one (see the warning)"
    if facts["mps_available"]:
        why += "; MPS is available but auto does not pick it (results differ between MPS and CPU)"
    return "cpu", why


def gpu_unused_warning(probe=None, facts=None):
    """One sentence with the fix when an NVIDIA GPU exists but torch cannot use it, else ``""``.

    Meant to be logged by every run: ``warning = gpu_unused_warning()`` then, if non-empty,
    ``feedback.reportError(warning, False)``. ``probe``/``facts`` default to this machine (cached).
    """
    probe = _nvidia_probe() if probe is None else probe
    if not probe.gpus:
        return ""
    facts = torch_facts() if facts is None else facts
    if not facts.get("installed") or facts.get("cuda_available"):
        return ""
    gpu = probe.gpus[0]
    build = facts["cuda_build"]
    cause = ("is a CPU-only build" if build.startswith("none") else
             f"is built for CUDA {build}, which driver {gpu.driver_version} cannot run")
    return (f"The GPU {gpu.name} (driver {gpu.driver_version}) is not used because torch {facts['version']} {cause}; "
            "fix: run uncertainty:install_dependencies with VARIANT=cuda (or update the NVIDIA driver), then restart "
            "QGIS.")


def environment_report(qgis_version="", dependency_folder=None):
    """Everything :mod:`algorithms.check_environment` shows, as a dict of plain values."""
    probe = _nvidia_probe()
    facts = torch_facts()
    device, why = _auto_choice(facts, probe)
    return {
        "qgis": qgis_version,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "packages": {label: package_facts(module) for label, module in PACKAGES},
        "torch": facts,
        "nvidia_smi": {"gpus": [vars(g) for g in probe.gpus], "problem": probe.problem},
        "auto_device": device,
        "auto_reason": why,
        "gpu_warning": gpu_unused_warning(probe, facts),
        "dependency_folder": str(dependency_folder) if dependency_folder else "",
    }


def report_html(report):
    """A self-contained HTML page of :func:`environment_report`."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(label)}</td><td>{e(facts['version'])}</td><td>{e(facts['location'])}"
                   f"{'<br>' + e(facts['error']) if facts.get('error') else ''}</td></tr>"
                   for label, facts in report["packages"].items())
    torch = report["torch"]
    devices = "".join(f"<li>{e(d['device'])}: {e(d['name'])}, {d['memory_gib']} GiB</li>"
                      for d in torch.get("devices", [])) or "<li>none</li>"
    gpus = "".join(f"<li>{e(g['name'])}, driver {e(g['driver_version'])}, {g['memory_mib']} MiB</li>"
                   for g in report["nvidia_smi"]["gpus"]) or f"<li>none ({e(report['nvidia_smi']['problem'])})</li>"
    warning = f"<p class='warning'><b>Warning:</b> {e(report['gpu_warning'])}</p>" if report["gpu_warning"] else ""
    cuda = (f"CUDA build {e(torch['cuda_build'])}; CUDA available: {torch['cuda_available']}; "
            f"MPS available: {torch['mps_available']}") if torch.get("installed") else "torch is missing"
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Segmentation uncertainty: environment</title>
<style>body{{font-family:sans-serif}} td{{padding:2px 8px;border-bottom:1px solid #ddd}} .warning{{color:#a00}}</style>
</head><body><h1>Environment</h1>
<p>QGIS {e(report['qgis'])}; Python {e(report['python']['version'])} ({e(report['python']['executable'])})</p>
<table><tr><th>Package</th><th>Version</th><th>Loaded from</th></tr>{rows}</table>
<h2>Devices</h2><p>{cuda}</p><p>torch devices:</p><ul>{devices}</ul><p>nvidia-smi:</p><ul>{gpus}</ul>
<p><b>auto picks {e(report['auto_device'])}</b>: {e(report['auto_reason'])}</p>{warning}
<p>Plugin dependency folder: {e(report['dependency_folder'] or 'none installed')}</p>
</body></html>"""
