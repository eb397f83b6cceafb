"""torch and SMP imported on demand with an install hint; the device a run uses.
"""

from ..errors import DependencyMissingError, InvalidOptionError
from ..options import DeviceChoice, look_up_option

__all__ = ["import_torch", "import_smp", "resolve_device", "INSTALL_HINT"]

INSTALL_HINT = (
    "The Python package {package!r} is needed to run segmentation models but cannot be imported ({error}). "
    "Fix: in QGIS run the algorithm uncertainty:install_dependencies; or install the plugin's requirements "
    "into the Python that QGIS uses, from the plugin folder, holding QGIS's own numpy: "
    "`python -c \"import numpy; print('numpy==' + numpy.__version__)\" > qgis-constraints.txt` "
    "then `python -m pip install -r requirements.txt -c qgis-constraints.txt` (on Windows in the OSGeo4W Shell), "
    "or run `make demo` in a development checkout; then restart QGIS."
)


def import_torch():
    try:
        import torch
    except (ImportError, OSError) as e:
        raise DependencyMissingError(INSTALL_HINT.format(package="torch", error=e)) from e
    return torch


def import_smp():
    try:
        import segmentation_models_pytorch as smp
    except (ImportError, OSError) as e:
        raise DependencyMissingError(
            INSTALL_HINT.format(package="segmentation-models-pytorch", error=e)
        ) from e
    return smp


def resolve_device(choice="auto"):
    """The ``torch.device`` for ``choice``: "auto", "cpu", "cuda", "cuda:N", a ``DeviceChoice`` or a device.

    "auto" is CUDA when ``torch.cuda.is_available()``, else the CPU. Asking for CUDA where torch sees none
    raises :class:`InvalidOptionError` naming the fix.
    """
    torch = import_torch()
    if isinstance(choice, torch.device):
        device = choice
    elif isinstance(choice, str) and choice.strip().lower().startswith("cuda:"):
        try:
            device = torch.device(choice.strip().lower())
        except RuntimeError as e:
            raise InvalidOptionError(f"DEVICE: expected auto, cpu, cuda or cuda:N; got {choice!r}.") from e
    else:
        member = look_up_option(choice, DeviceChoice, "DEVICE")
        if member is DeviceChoice.AUTO:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(member.value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidOptionError(
                f"DEVICE: expected a device torch can use; got {str(device)!r}, but torch "
                f"{torch.__version__} sees no CUDA GPU (CUDA build: {torch.version.cuda or 'none'}). "
                "Fix: choose auto or cpu, or install a CUDA build of torch matching the GPU driver."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"DEVICE: expected a GPU index below {torch.cuda.device_count()}; got {str(device)!r}. "
                "Fix: choose cuda (the first GPU) or an existing index."
            )
    return device
