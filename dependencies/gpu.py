"""What ``nvidia-smi`` says about the NVIDIA driver and GPUs, without torch.

``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits`` prints one line per GPU,
e.g. ``NVIDIA GeForce RTX 3060, 580.95.05, 12288``. The driver version decides which CUDA builds of torch can run
(see :mod:`.variants`); no line, a missing program or a failure ("couldn't communicate with the NVIDIA driver")
mean no usable NVIDIA GPU.
"""

import os
import shutil
# Bandit B404: runs nvidia-smi only, a fixed argument list, no shell.
import subprocess  # nosec B404
from dataclasses import dataclass, field

__all__ = ["NvidiaGpu", "GpuProbe", "QUERY_ARGS", "parse_nvidia_smi", "probe_nvidia_gpus", "driver_tuple"]

QUERY_ARGS = ("--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class NvidiaGpu:
    name: str
    driver_version: str
    memory_mib: int


@dataclass(frozen=True)
class GpuProbe:
    """GPUs seen by ``nvidia-smi`` (empty when none) and, when there are none, why (``problem``)."""

    gpus: tuple = ()
    problem: str = ""
    details: dict = field(default_factory=dict)

    @property
    def driver_version(self):
        return self.gpus[0].driver_version if self.gpus else None


def driver_tuple(version):
    """``"580.95.05"`` -> ``(580, 95, 5)``; ``"581.57"`` -> ``(581, 57)`` (Windows drivers have two parts)."""
    return tuple(int(part) for part in str(version).strip().split(".") if part.isdigit())


def parse_nvidia_smi(stdout, returncode=0):
    """A :class:`GpuProbe` from the text and exit status of the ``QUERY_ARGS`` query."""
    text = (stdout or "").strip()
    if returncode != 0:
        first = text.splitlines()[0] if text else f"exit status {returncode}"
        return GpuProbe(problem=f"nvidia-smi failed: {first}")
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not driver_tuple(parts[1]):
            return GpuProbe(problem=f"nvidia-smi printed an unexpected line: {line!r}")
        try:
            memory = int(float(parts[2]))
        except ValueError:
            memory = 0
        gpus.append(NvidiaGpu(parts[0], parts[1], memory))
    return GpuProbe(gpus=tuple(gpus), problem="" if gpus else "nvidia-smi lists no GPU")


def _nvidia_smi_program(system):
    found = shutil.which("nvidia-smi")
    if found or system != "Windows":
        return found
    for candidate in (os.path.expandvars(r"%SystemRoot%\System32\nvidia-smi.exe"),
                      os.path.expandvars(r"%ProgramFiles%\NVIDIA Corporation\NVSMI\nvidia-smi.exe")):
        if os.path.isfile(candidate):
            return candidate
    return None


def probe_nvidia_gpus(system):
    """Run ``nvidia-smi`` on this machine (``system`` as ``platform.system()`` says) and parse its answer."""
    program = _nvidia_smi_program(system)
    if program is None:
        return GpuProbe(problem="nvidia-smi not found (no NVIDIA driver installed)")
    try:
        # Bandit B603: fixed argument list (nvidia-smi found on PATH), no shell.
        done = subprocess.run([program, *QUERY_ARGS], capture_output=True, text=True, timeout=30)  # nosec B603
    except (OSError, subprocess.TimeoutExpired) as e:
        return GpuProbe(problem=f"nvidia-smi could not run: {e}")
    return parse_nvidia_smi(done.stdout + ("\n" + done.stderr if done.returncode else ""), done.returncode)
