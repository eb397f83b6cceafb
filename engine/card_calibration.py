"""Write a calibrated copy of a model card: the same card plus ``calibration: {temperature: T}``.

The copy goes next to the original by default (``<stem>_calibrated.yaml``), so a relative ``weights:`` path still
points at the same file; written elsewhere, the weights path becomes absolute. The copy is validated as a card
before it is written, and written to a temporary file then renamed, so a failure leaves nothing half-written.
The original card is never modified. Comments of the original are not carried over (the YAML is re-emitted).
"""

from pathlib import Path

import yaml

from .errors import ModelCardError
from .model_card import TEMPERATURE_RANGE, load_model_card, parse_model_card
from .raster_io import check_output_folder, write_text_atomic

__all__ = ["write_calibrated_card", "calibrated_card_path"]


def calibrated_card_path(card_path):
    """``<folder>/<stem>_calibrated.yaml`` for the card at ``card_path``."""
    path = Path(card_path)
    return path.with_name(f"{path.stem}_calibrated.yaml")


def write_calibrated_card(card_path, temperature, out_path=None):
    """Write the card at ``card_path`` with ``calibration.temperature = temperature`` to ``out_path``.

    :param temperature: T from :func:`engine.temperature.fit_temperature` (``TEMPERATURE`` of evaluate).
    :param out_path: default :func:`calibrated_card_path`.
    :returns: the :class:`~engine.model_card.ModelCard` of the written copy.
    :raises ModelCardError: the original is not a valid card, or T is out of range.
    :raises OutputWriteError: the copy cannot be written.
    """
    original = load_model_card(card_path)  # validates, and resolves the weights path
    t = float(temperature)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        raise ModelCardError(
            f"temperature: expected {lo:g} <= T <= {hi:g}; got {temperature!r}. A fit that ends at the edge of its "
            "range means the reference does not pin T down: check the reference, or keep the card uncalibrated."
        )
    document = yaml.safe_load(original.path.read_text(encoding="utf-8-sig"))
    out = Path(out_path) if out_path is not None else calibrated_card_path(original.path)
    out = out.expanduser().absolute()
    if out.parent.resolve() != original.path.parent.resolve():
        document["weights"] = str(original.weights_path)
    document["calibration"] = {"temperature": t}
    card = parse_model_card(document, out)  # the copy is a valid card before it touches the disk
    text = (f"# {original.path.name} with temperature scaling T = {t:.6g} (fitted by uncertainty:evaluate)\n"
            + yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    check_output_folder(out)
    write_text_atomic(out, text)
    return card
