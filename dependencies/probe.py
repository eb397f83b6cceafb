"""Run in a fresh interpreter: what a given ``sys.path`` imports. Standard library only, no package imports.

``python -I probe.py CONFIG.json`` prints JSON. CONFIG has ``path`` (the list that becomes ``sys.path``),
``fingerprint`` (distribution names whose files are fingerprinted), ``modules`` (modules to import, reporting
version and file) and ``smoke`` (import torch, torchvision and segmentation_models_pytorch and run a tiny
model). A fingerprint is the SHA-256 of the sorted (relative path, size, mtime in ns) of every file the
distribution owns, so a reinstall, an upgrade or an edited file changes it while reading it does not.
"""

import hashlib
import json
import os
import sys

__all__ = ["main"]


def _norm(name):
    return name.lower().replace("_", "-").replace(".", "-")


def _owned_files(dist):
    """Absolute paths of the files of an importlib.metadata distribution (RECORD, installed-files, top_level)."""
    base = os.path.dirname(str(dist._path)) if hasattr(dist, "_path") else None
    files = dist.files
    if files:
        return [str(f.locate()) for f in files]
    out = []
    top = dist.read_text("top_level.txt") or ""
    for name in top.split():
        root = os.path.join(base, name)
        if os.path.isdir(root):
            for folder, _, names in os.walk(root):
                out += [os.path.join(folder, n) for n in names]
        for suffix in (".py",):
            if os.path.isfile(root + suffix):
                out.append(root + suffix)
    return out


def fingerprint(dist):
    digest = hashlib.sha256()
    count = 0
    for path in sorted(set(_owned_files(dist))):
        try:
            stat = os.stat(path)
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        count += 1
    return {"sha256": digest.hexdigest(), "files": count}


def _module_facts(name):
    import importlib

    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - any failure to import is a fact to report
        return {"error": f"{type(e).__name__}: {e}"}
    version = getattr(module, "__version__", None) or getattr(module, "PYQT_VERSION_STR", None)
    if version is None and name == "osgeo.gdal":
        version = module.__version__ if hasattr(module, "__version__") else module.VersionInfo("RELEASE_NAME")
    return {"version": str(version), "file": getattr(module, "__file__", None)}


def _smoke():
    import torch
    import torchvision  # noqa: F401
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.FPN("resnet18", encoder_weights=None, classes=2, decoder_dropout=0.2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    import torch.fx

    torch.fx.symbolic_trace(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Dropout()))
    return {"output_shape": list(out.shape)}


def main(argv):
    with open(argv[1], encoding="utf-8") as f:
        config = json.load(f)
    sys.path[:] = config["path"]
    import importlib.metadata as metadata

    wanted = {_norm(n) for n in config.get("fingerprint", [])}
    dists = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or _norm(name) in dists:
            continue  # the first on sys.path is the one that imports
        entry = {"name": name, "version": dist.version, "location": str(getattr(dist, "_path", ""))}
        if _norm(name) in wanted:
            entry.update(fingerprint(dist))
        dists[_norm(name)] = entry
    result = {"dists": dists, "modules": {m: _module_facts(m) for m in config.get("modules", [])}}
    if config.get("smoke"):
        try:
            result["smoke"] = _smoke()
        except Exception as e:  # noqa: BLE001 - the failure is the answer
            result["smoke"] = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write("\n@@PROBE@@" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv)
