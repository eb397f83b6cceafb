"""load_model: card → network or TorchScript → weights → device → probe → seeded MC dropout.

The steps are documented in :mod:`engine.model_loading`; this module only sequences them and records what
it learnt in a :class:`LoadedModel`.
"""

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Union

from ..errors import ModelLoadError, RasterInputError
from ..model_card import ModelCard, card_file_hash, load_model_card
from .device import import_torch, resolve_device
from .network import add_head_dropout, build_smp
from .programs import load_program, program_kind
from .torchscript import SCRIPTED_DROPOUT_NAMES
from .weights import load_state, read_state_dict

__all__ = ["LoadedModel", "load_model", "check_band_count", "NO_DROPOUT_WARNING"]

#: Warning text for a model whose MC samples would all be identical.
NO_DROPOUT_WARNING = (
    "model has no dropout layer: all MC samples would be identical and uncertainty zero; use TTA instead"
)


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, on ``device``, dropout layers seeded and inactive.

    ``n_classes`` is the number of probability channels (2 for a one-channel sigmoid model, ``binary``);
    ``n_dropout_layers`` counts the seeded dropout layers MC Dropout can switch on; ``weights_sha256`` is the
    hex SHA-256 of the weights file; ``warnings`` holds every warning raised while loading, as text;
    ``probe_shape`` is the (height, width) of the zero tile the model accepted at load
    (:func:`engine.probe.run_probe`).

    One loaded model serves one run at a time: a run switches its dropout layers on and seeds them, so two
    concurrent runs need two loaded models.
    """

    model: Any
    card: ModelCard
    n_classes: int
    binary: bool
    n_dropout_layers: int
    weights_sha256: str
    device: Any = None
    warnings: list = field(default_factory=list)
    probe_shape: Optional[Tuple[int, int]] = None
    #: MC forwards already traced and checked for this model, by (tile shape, device): see
    #: :func:`engine.prefix_cache.mc_forward_for`. A run reuses them instead of tracing again.
    mc_forwards: dict = field(default_factory=dict, repr=False, compare=False)


def load_model(card: Union[ModelCard, str], device: Any = "cpu") -> LoadedModel:
    """Build and load the model of ``card`` (a :class:`ModelCard` or a card path) on ``device``.

    Returns a :class:`LoadedModel`. Raises :class:`ModelCardError` when the card cannot describe a buildable
    model, :class:`ModelLoadError` when the weights are missing, corrupt, unsafe or for another
    architecture, :class:`DependencyMissingError` without torch/SMP, :class:`InvalidOptionError` for an
    unusable device. Warnings are returned in ``LoadedModel.warnings`` and also issued as ``UserWarning``.
    """
    if not isinstance(card, ModelCard):
        card = load_model_card(card)
    torch = import_torch()
    from ..dropout import dropout_modules, prepare_mc_dropout

    device = resolve_device(device)
    notes = []
    if card.is_torchscript:
        model = load_program(card, device, torch, notes)
    else:
        model = build_smp(card, notes)
        state = read_state_dict(card.weights_path, torch)
        load_state(model, state, card, notes, torch)
        add_head_dropout(model, card)
        model.to(device)
    probe_shape = check_output(model, card, device, torch)

    try:
        n_dropout = prepare_mc_dropout(model)
    except Exception as e:  # a scripted module may refuse the swap; MC Dropout is then unavailable
        if not card.is_torchscript:
            raise
        n_dropout = 0
        model.eval()
        notes.append(f"dropout layers could not be prepared for MC Dropout ({type(e).__name__}: {e})")
    if card.is_torchscript:
        scripted = [m for m in model.modules() if getattr(m, "original_name", None) in SCRIPTED_DROPOUT_NAMES]
        if scripted and n_dropout == 0:
            notes.append(
                f"TorchScript model: its {len(scripted)} dropout layer(s) are compiled and cannot be replaced "
                "by seeded MC dropout layers"
            )
    active = [m for m in dropout_modules(model) if m.p > 0]
    if not active:
        notes.append(
            NO_DROPOUT_WARNING if n_dropout == 0 else NO_DROPOUT_WARNING.replace(
                "no dropout layer", f"no dropout layer with p > 0 ({n_dropout} with p = 0)"
            )
        )
    for note in notes:
        warnings.warn(f"{card.path.name}: {note}", UserWarning, stacklevel=2)

    return LoadedModel(
        model=model,
        card=card,
        n_classes=card.n_classes,
        binary=card.out_channels == 1,
        n_dropout_layers=n_dropout,
        weights_sha256=card_file_hash(card.weights_path),
        device=device,
        warnings=notes,
        probe_shape=probe_shape,
    )


def check_output(model, card, device, torch):
    """One forward pass on a small zero tile (:func:`engine.probe.run_probe`): the output must be logits
    ``(1, out_channels, *tile)``."""
    from ..probe import run_probe

    model.eval()
    kind = program_kind(card) if card.is_torchscript else f"smp.{card.architecture} model"
    x, out, error = run_probe(model, card.n_bands, card.tile_shape, device)
    shape, attempt = tuple(x.shape), tuple(x.shape[-2:])
    if out is None:
        raise ModelLoadError(
            f"Model card {card.path}: the {kind} fails on a zero tile of shape {shape} "
            f"({type(error).__name__}: {str(error)[:300]}). Fix: check input.bands, tiling.model_input_shape "
            "and the model: section."
        ) from error
    want = (1, card.out_channels) + attempt
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        fix = (
            "set num_classes: to the output channel count (1 for a sigmoid model) or export a model that "
            "returns logits at input resolution"
            if card.is_torchscript
            else "make the model return logits at input resolution (e.g. FPN with encoder_depth < 5 needs "
            "`upsampling: 4 / 2**(5 - encoder_depth)`)"
        )
        raise ModelLoadError(
            f"Model card {card.path}: expected the {kind} to return one tensor of shape {want} "
            f"(batch, output channels, height, width); got {got}. Fix: {fix}."
        )
    return attempt


def check_band_count(card: ModelCard, raster_band_count: int) -> None:
    """Raise :class:`RasterInputError` when the card reads a band the raster does not have.

    ``raster_band_count`` is the raster's number of bands; card bands are 1-based, so bands (1, 2, 4) need a
    raster with at least 4 bands and fail on a 3-band one with a message naming both numbers.
    """
    count = int(raster_band_count)
    too_high = [b for b in card.bands if b > count]
    if too_high:
        raise RasterInputError(
            f"INPUT raster: the model card {card.path} reads bands {list(card.bands)}, but the raster has "
            f"{count} band(s) (band {too_high[0]} > {count}). Fix: choose a raster with at least "
            f"{max(card.bands)} bands, or edit input.bands in the card."
        )
