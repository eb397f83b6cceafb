"""Which build of torch to install: ``auto``, ``cpu`` or ``cuda``, from platform facts and ``nvidia-smi``.

Facts about the pinned torch release (requirements.txt pins torch 2.14.1; re-check when the pin moves):

- Linux: the default wheels (the index pip is configured with) carry CUDA 13.0 and also run on the CPU. CUDA
  13.0 needs an NVIDIA driver >= 580.65.06. Older drivers need a CUDA 12.x build from PyTorch's own wheel index,
  channel ``cu128`` (driver >= 570.26) or ``cu126`` (>= 560.28.03); its ``cpu`` channel has CPU-only wheels
  (about 4 GB smaller).
- Windows: the default wheels are CPU-only; CUDA builds come only from PyTorch's wheel index (channels
  ``cu130`` >= 580.88, ``cu128`` >= 570.65, ``cu126`` >= 560.76).
- macOS: Apple silicon wheels use the GPU through MPS; there are no CUDA builds and no Intel-Mac wheels.

The repository names no package index: PyTorch's wheel index is given by the user (``index_url``, the
``TORCH_INDEX_URL`` parameter); the channel is appended as a path segment (``<index_url>/cu128``). Minimum driver
versions are NVIDIA's for each CUDA toolkit release (CUDA release notes, table "toolkit driver version").
"""

from dataclasses import dataclass

from .errors import InstallError
from .gpu import driver_tuple

__all__ = ["PlatformFacts", "TorchVariant", "CudaChannel", "CUDA_CHANNELS", "LINUX_DEFAULT_CUDA", "choose_variant",
           "VARIANTS"]

VARIANTS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PlatformFacts:
    """``system`` and ``machine`` as :mod:`platform` reports them (``Linux``/``Windows``/``Darwin``)."""

    system: str
    machine: str


@dataclass(frozen=True)
class CudaChannel:
    name: str
    cuda: str
    min_driver_linux: str
    min_driver_windows: str

    def min_driver(self, system):
        return self.min_driver_windows if system == "Windows" else self.min_driver_linux


# Newest first. The first whose minimum driver the installed driver meets is chosen.
CUDA_CHANNELS = (
    CudaChannel("cu130", "13.0", "580.65.06", "580.88"),
    CudaChannel("cu128", "12.8", "570.26", "570.65"),
    CudaChannel("cu126", "12.6", "560.28.03", "560.76"),
)
LINUX_DEFAULT_CUDA = "cu130"  # the CUDA build that Linux's default torch wheels carry


@dataclass(frozen=True)
class TorchVariant:
    """What to install. ``channel`` None means the default index; otherwise ``extra_index_url`` is set."""

    variant: str  # "cpu" or "cuda"
    channel: str = None
    extra_index_url: str = None
    reason: str = ""
    warning: str = ""

    def describe(self):
        source = f"PyTorch's {self.channel} channel" if self.channel else "the default wheels"
        return f"{self.variant} build from {source}: {self.reason}"


def _best_channel(system, driver):
    have = driver_tuple(driver)
    for channel in CUDA_CHANNELS:
        if have >= driver_tuple(channel.min_driver(system)):
            return channel
    return None


def _from_channel(variant, channel, index_url, reason):
    return TorchVariant(variant, channel, f"{index_url.rstrip('/')}/{channel}", reason)


def choose_variant(requested, facts, probe, index_url=""):
    """The :class:`TorchVariant` for ``requested`` (auto/cpu/cuda) on ``facts`` with ``probe`` (a GpuProbe).

    ``auto`` installs a CUDA build when a GPU and a fitting driver exist and the build can be had (on Linux with
    a driver >= 580.65.06 from the default wheels; otherwise from ``index_url``), else the CPU build with a
    one-sentence ``warning`` naming the fix. ``cuda`` raises :class:`InstallError` instead of falling back.
    """
    requested = (requested or "auto").strip().lower()
    if requested not in VARIANTS:
        raise InstallError(f"VARIANT: expected one of {', '.join(VARIANTS)}; got {requested!r}. "
                           "Fix: choose one of these.")
    system = facts.system
    index_url = (index_url or "").strip()
    if system == "Darwin":
        if facts.machine not in ("arm64", "aarch64"):
            raise InstallError(f"torch 2.14 publishes no wheels for Intel Macs ({facts.machine}). Fix: use a Mac "
                               "with Apple silicon, or Linux/Windows.")
        if requested == "cuda":
            raise InstallError("VARIANT=cuda: there are no CUDA builds of torch for macOS. Fix: choose auto or "
                               "cpu (Apple silicon GPUs are used through MPS).")
        return TorchVariant("cpu", reason="macOS on Apple silicon: the default wheels use the GPU through MPS")
    if system not in ("Linux", "Windows"):
        raise InstallError(f"Unsupported platform {system!r}. Fix: install torch yourself (README, 'From a shell').")

    def cpu(reason, warning=""):
        if system == "Linux" and index_url:
            variant = _from_channel("cpu", "cpu", index_url, reason)
        elif system == "Linux":
            reason += "; CPU-only wheels need PyTorch's index (TORCH_INDEX_URL), so the default CUDA wheels are " \
                      "used, which run on the CPU"
            variant = TorchVariant("cpu", reason=reason)
        else:
            variant = TorchVariant("cpu", reason=reason)
        return TorchVariant(variant.variant, variant.channel, variant.extra_index_url, variant.reason, warning)

    if not probe.gpus:
        if requested == "cuda":
            raise InstallError(f"VARIANT=cuda but no NVIDIA GPU is usable ({probe.problem}). Fix: install the "
                               "NVIDIA driver, or choose auto or cpu.")
        return cpu(f"no NVIDIA GPU ({probe.problem})")
    gpu, driver = probe.gpus[0], probe.driver_version
    if requested == "cpu":
        return cpu(f"cpu requested although {gpu.name} (driver {driver}) is present")
    channel = _best_channel(system, driver)
    if channel is None:
        oldest = CUDA_CHANNELS[-1]
        message = (f"{gpu.name} has driver {driver}, older than the {oldest.min_driver(system)} that the oldest "
                   f"CUDA build of torch 2.14 (CUDA {oldest.cuda}) needs")
        if requested == "cuda":
            raise InstallError(f"VARIANT=cuda: {message}. Fix: update the NVIDIA driver, or choose cpu.")
        return cpu(message, f"The GPU {gpu.name} will not be used: its driver {driver} is too old for torch 2.14; "
                            f"fix: update the NVIDIA driver to {oldest.min_driver(system)} or newer and run "
                            "install_dependencies again with VARIANT=cuda.")
    if system == "Linux" and channel.name == LINUX_DEFAULT_CUDA:
        return TorchVariant("cuda", reason=f"{gpu.name}, driver {driver} >= {channel.min_driver(system)}: the "
                                           f"default Linux wheels carry CUDA {channel.cuda}")
    reason = f"{gpu.name}, driver {driver}: CUDA {channel.cuda} build (needs driver >= {channel.min_driver(system)})"
    if index_url:
        return _from_channel("cuda", channel.name, index_url, reason)
    fix = (f"give TORCH_INDEX_URL (PyTorch's wheel index; channel {channel.name} is appended) and run "
           "install_dependencies again with VARIANT=cuda")
    if requested == "cuda":
        raise InstallError(f"VARIANT=cuda: {reason} comes only from PyTorch's wheel index. Fix: {fix}.")
    return cpu(f"{reason} would need PyTorch's wheel index, which was not given",
               f"The GPU {gpu.name} will not be used: the CUDA build for driver {driver} is not on the default "
               f"index; fix: {fix}.")
