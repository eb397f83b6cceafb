"""The dependency folder without installing torch: sys.path order, requirements, pip progress, the proof of
unchanged files, and the one-sentence GPU warning (on this machine's real torch build)."""

import json
import sys
from pathlib import Path

import pytest

from seg_uncertainty.dependencies.environment import gpu_unused_warning, torch_facts
from seg_uncertainty.dependencies.errors import InstallError
from seg_uncertainty.dependencies.gpu import GpuProbe, parse_nvidia_smi
from seg_uncertainty.dependencies.installer import (
    _prove_unchanged, activate, active_environment, probe_python, read_requirements,
)
from seg_uncertainty.dependencies.pip_runner import PipProgress

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"


def _installation(root, name, overrides=True):
    env = root / name
    (env / "site" / "torch").mkdir(parents=True)
    (env / "overrides").mkdir()
    if overrides:
        (env / "overrides" / "sympy").mkdir()
    (env / "manifest.json").write_text(json.dumps({"packages": ["torch==2.14.1"]}))
    (root / "active.json").write_text(json.dumps({"env": name}))
    return env


def test_activate_appends_behind_qgis_packages_and_overrides_first(tmp_path):
    qgis_path = ["/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"]
    old = _installation(tmp_path, "env-1-cpu")
    path = list(qgis_path)
    assert activate(tmp_path, path) == [str(old / "overrides"), str(old / "site")]
    assert path == [str(old / "overrides")] + qgis_path + [str(old / "site")]
    activate(tmp_path, path)  # idempotent
    assert path == [str(old / "overrides")] + qgis_path + [str(old / "site")]
    new = _installation(tmp_path, "env-2-cuda", overrides=False)  # a switch: the old folders leave the path
    activate(tmp_path, path)
    assert path == qgis_path + [str(new / "site")]
    assert active_environment(tmp_path) == (new, {"packages": ["torch==2.14.1"]})


def test_requirements_are_read_from_the_file_so_later_pins_are_picked_up(tmp_path):
    lines = read_requirements(REQUIREMENTS)
    assert {"torch==2.14.1", "torchvision==0.29.1", "segmentation-models-pytorch==0.6.0"} <= set(lines)
    extended = tmp_path / "requirements.txt"
    extended.write_text(REQUIREMENTS.read_text() + "onnxruntime==1.23.2  # added by a later issue\n")
    assert read_requirements(extended) == lines + ["onnxruntime==1.23.2"]


def test_progress_follows_pips_own_lines():
    counter = PipProgress(4)
    fractions, steps = [], []
    for line in (FIXTURES / "pip_install_target.log").read_text().splitlines():
        step = counter.feed(line)
        if step:
            steps.append(step)
            fractions.append(counter.fraction)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert fractions[:6] == [1 / 16, 2 / 16, 3 / 16, 4 / 16, 5 / 16, 6 / 16]  # 4 found + 2 fetched of 2·4 steps
    assert steps[-2:] == ["Installing (unpacking) collected packages", "pip finished"]


def test_proof_fails_when_a_protected_distributions_files_change(tmp_path):
    site = tmp_path / "site"
    (site / "fakenumpy").mkdir(parents=True)
    module = site / "fakenumpy" / "__init__.py"
    module.write_text("__version__ = '1.24.2'\n")
    info = site / "fakenumpy-1.24.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakenumpy\nVersion: 1.24.2\n")
    (info / "RECORD").write_text("fakenumpy/__init__.py,,\nfakenumpy-1.24.2.dist-info/METADATA,,\n")
    path = [str(site)] + [p for p in sys.path if p and "site-packages" not in p and "dist-packages" not in p]
    before = probe_python(sys.executable, path, fingerprint=["fakenumpy"], modules=["fakenumpy"])
    same = probe_python(sys.executable, path, fingerprint=["fakenumpy"], modules=["fakenumpy"])
    assert before["dists"]["fakenumpy"]["files"] == 2
    assert _prove_unchanged(before, same, ["fakenumpy"])["distributions"] == 1
    module.write_text("__version__ = '1.24.2'  # edited\n")
    after = probe_python(sys.executable, path, fingerprint=["fakenumpy"], modules=["fakenumpy"])
    with pytest.raises(InstallError, match="fakenumpy sha256"):
        _prove_unchanged(before, after, ["fakenumpy"])


def test_gpu_warning_on_this_torch_build():
    """This machine's torch is a CUDA 13.0 build without a GPU: with a recorded old-driver probe the sentence
    names the GPU, the cause and the fix; with no GPU there is nothing to say."""
    facts = torch_facts()
    assert facts["installed"] and not facts["cuda_available"]
    old = parse_nvidia_smi((FIXTURES / "nvidia_smi" / "linux_470.256.02_k80.csv").read_text())
    warning = gpu_unused_warning(old, facts)
    assert warning == (f"The GPU Tesla K80 (driver 470.256.02) is not used because torch {facts['version']} is "
                       f"built for CUDA {facts['cuda_build']}, which driver 470.256.02 cannot run; fix: run "
                       "uncertainty:install_dependencies with VARIANT=cuda (or update the NVIDIA driver), then "
                       "restart QGIS.")
    assert gpu_unused_warning(GpuProbe(problem="nvidia-smi not found"), facts) == ""
    assert gpu_unused_warning() == ""  # this machine: no NVIDIA GPU
