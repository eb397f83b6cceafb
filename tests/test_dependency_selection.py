"""Which torch build install_dependencies picks: Linux/Windows/macOS × no GPU / old driver / new driver.

Only Linux can be exercised on this machine; the other platforms run the same selection code on platform facts
and on ``nvidia-smi`` outputs recorded on such machines (tests/fixtures/nvidia_smi, see its README).
"""

import platform
from pathlib import Path

import pytest

from seg_uncertainty.dependencies.errors import InstallError
from seg_uncertainty.dependencies.gpu import GpuProbe, driver_tuple, parse_nvidia_smi, probe_nvidia_gpus
from seg_uncertainty.dependencies.interpreter import find_python, interpreter_candidates
from seg_uncertainty.dependencies.variants import PlatformFacts, choose_variant

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "nvidia_smi"
INDEX = "file:///srv/pytorch-wheels"  # stands for PyTorch's wheel index; the channel is appended
LINUX, WINDOWS = PlatformFacts("Linux", "x86_64"), PlatformFacts("Windows", "AMD64")
MAC_ARM, MAC_INTEL = PlatformFacts("Darwin", "arm64"), PlatformFacts("Darwin", "x86_64")
NO_GPU = GpuProbe(problem="nvidia-smi not found (no NVIDIA driver installed)")


def recorded(name, returncode=0):
    return parse_nvidia_smi((FIXTURES / name).read_text(), returncode)


def test_parse_recorded_outputs():
    two = recorded("linux_570.172.08_2xa100.csv")
    assert [(g.name, g.driver_version, g.memory_mib) for g in two.gpus] == [
        ("NVIDIA A100-SXM4-40GB", "570.172.08", 40960)] * 2
    assert recorded("windows_581.57_rtx3060.csv").gpus[0].memory_mib == 12288
    failed = recorded("linux_driver_not_loaded.txt", returncode=9)
    assert failed.gpus == () and "couldn't communicate with the NVIDIA driver" in failed.problem
    assert driver_tuple("580.65.06") > driver_tuple("580.9") and driver_tuple("581.57") == (581, 57)


# (platform, nvidia-smi output or None, requested, expected (variant, channel) , warns)
CASES = [
    # Linux: default wheels carry CUDA 13.0 (driver >= 580.65.06); older drivers need a cu12x channel.
    (LINUX, None, "auto", ("cpu", "cpu"), False),                                   # no GPU, index given
    (LINUX, ("linux_driver_not_loaded.txt", 9), "auto", ("cpu", "cpu"), False),     # driver not loaded
    (LINUX, ("linux_470.256.02_k80.csv", 0), "auto", ("cpu", "cpu"), True),         # old driver: CPU + warning
    (LINUX, ("linux_570.172.08_2xa100.csv", 0), "auto", ("cuda", "cu128"), False),  # mid driver: cu128 channel
    (LINUX, ("linux_580.95.05_rtx4090.csv", 0), "auto", ("cuda", None), False),     # new driver: default wheels
    (LINUX, ("linux_580.95.05_rtx4090.csv", 0), "cpu", ("cpu", "cpu"), False),
    # Windows: default wheels are CPU-only; every CUDA build comes from PyTorch's index.
    (WINDOWS, None, "auto", ("cpu", None), False),
    (WINDOWS, ("windows_472.12_gtx1060.csv", 0), "auto", ("cpu", None), True),
    (WINDOWS, ("windows_566.36_rtx2070super.csv", 0), "auto", ("cuda", "cu126"), False),
    (WINDOWS, ("windows_581.57_rtx3060.csv", 0), "cuda", ("cuda", "cu130"), False),
    # macOS on Apple silicon: default wheels, GPU through MPS.
    (MAC_ARM, None, "auto", ("cpu", None), False),
]


@pytest.mark.parametrize("facts, smi, requested, expected, warns", CASES)
def test_selection_matrix(facts, smi, requested, expected, warns):
    probe = recorded(*smi) if smi else NO_GPU
    variant = choose_variant(requested, facts, probe, INDEX)
    assert (variant.variant, variant.channel) == expected
    assert variant.extra_index_url == (f"{INDEX}/{variant.channel}" if variant.channel else None)
    assert bool(variant.warning) == warns
    if warns:
        assert "fix: update the NVIDIA driver" in variant.warning and probe.gpus[0].name in variant.warning


def test_without_pytorch_index_a_gpu_that_needs_it_falls_back_to_cpu_saying_so():
    # Windows RTX 3060 on driver 581.57 could run CUDA 13.0, but only PyTorch's index has that build.
    variant = choose_variant("auto", WINDOWS, recorded("windows_581.57_rtx3060.csv"), "")
    assert (variant.variant, variant.channel) == ("cpu", None)
    assert "RTX 3060 will not be used" in variant.warning and "TORCH_INDEX_URL" in variant.warning
    # Linux without the index: the default (CUDA) wheels, which also run on the CPU.
    assert choose_variant("cpu", LINUX, NO_GPU, "").channel is None
    with pytest.raises(InstallError, match="TORCH_INDEX_URL"):
        choose_variant("cuda", WINDOWS, recorded("windows_581.57_rtx3060.csv"), "")


@pytest.mark.parametrize("facts, smi, requested, message", [
    (LINUX, None, "cuda", "no NVIDIA GPU is usable"),
    (LINUX, ("linux_470.256.02_k80.csv", 0), "cuda", "driver 470.256.02, older than the 560.28.03"),
    (WINDOWS, ("windows_472.12_gtx1060.csv", 0), "cuda", "older than the 560.76"),
    (MAC_ARM, None, "cuda", "no CUDA builds of torch for macOS"),
    (MAC_INTEL, None, "auto", "no wheels for Intel Macs"),
    (LINUX, None, "rocm", "expected one of auto, cpu, cuda"),
])
def test_refusals_name_the_fix(facts, smi, requested, message):
    with pytest.raises(InstallError, match=message) as raised:
        choose_variant(requested, facts, recorded(*smi) if smi else NO_GPU, INDEX)
    assert "Fix:" in str(raised.value)


def test_this_machine_probe_and_choice():
    """The real nvidia-smi probe here: no NVIDIA driver on this machine, so auto is the CPU build."""
    probe = probe_nvidia_gpus(platform.system())
    assert probe.gpus == () and probe.problem
    assert choose_variant("auto", PlatformFacts(platform.system(), platform.machine()), probe).variant == "cpu"


def test_interpreter_candidates_per_platform():
    windows = interpreter_candidates(r"C:\OSGeo4W\bin\qgis-bin.exe", r"C:\OSGeo4W\apps\Python312",
                                     r"C:\OSGeo4W\apps\Python312", (3, 12, 7), "Windows")
    assert windows[0].replace("\\", "/").endswith("OSGeo4W/apps/Python312/python.exe")
    assert not any(c.endswith("qgis-bin.exe") for c in windows)
    mac = interpreter_candidates("/Applications/QGIS.app/Contents/MacOS/QGIS", "/Applications/QGIS.app/Contents/"
                                 "Frameworks", "/Applications/QGIS.app/Contents/Frameworks", (3, 11, 9), "Darwin")
    assert "/Applications/QGIS.app/Contents/MacOS/bin/python3" in mac and mac[0].endswith("bin/python3.11")
    linux = interpreter_candidates("/usr/bin/python3", "/usr", "/usr", (3, 11, 2), "Linux")
    assert linux[0] == "/usr/bin/python3"


def test_find_python_returns_this_interpreter():
    import subprocess
    import sys

    found = find_python()
    done = subprocess.run([found, "-c", "import sys; print(sys.version_info[:3], sys.base_prefix)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"{tuple(sys.version_info[:3])} {sys.base_prefix}"
