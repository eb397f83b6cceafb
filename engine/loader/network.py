"""Card → SMP network: the allow-listed architecture, its dropout argument or a head dropout layer.

See :mod:`engine.model_loading` for the rules (encoder_weights forced to None, activation and aux_params
dropped, dropout routed to the architecture"s own argument or a ``mc_dropout`` layer before the head).
"""

import copy
import inspect
import reprlib
from collections import OrderedDict

from ..errors import ModelCardError
from ..model_card import ALLOWED_ARCHITECTURES, DROPOUT_KEYS
from .device import import_smp, import_torch

__all__ = ["build_smp", "add_head_dropout", "dropout_argument"]

def dropout_argument(cls):
    """The name under which ``cls.__init__`` takes a dropout rate, or None."""
    params = inspect.signature(cls.__init__).parameters
    return next((name for name in DROPOUT_KEYS if name in params), None)


def build_smp(card, notes):
    smp = import_smp()
    if card.architecture not in ALLOWED_ARCHITECTURES or not hasattr(smp, card.architecture):
        raise ModelCardError(
            f"Model card {card.path}: `model._target_`: {card.architecture!r} is not an allowed SMP "
            f"architecture in segmentation-models-pytorch {getattr(smp, '__version__', '?')}; allowed: "
            f"{', '.join(a for a in ALLOWED_ARCHITECTURES if hasattr(smp, a))}. Fix: name one of them, or "
            "upgrade segmentation-models-pytorch."
        )
    cls = getattr(smp, card.architecture)
    kwargs = copy.deepcopy(card.model_kwargs)
    for key in DROPOUT_KEYS:
        kwargs.pop(key, None)
    argument = dropout_argument(cls)
    if argument is not None and card.dropout_p is not None:
        kwargs[argument] = card.dropout_p
    kwargs["encoder_weights"] = None
    activation = kwargs.pop("activation", None)
    if activation is not None:
        notes.append(f"model.activation {activation!r} ignored: the engine applies softmax/sigmoid to logits")
    if kwargs.pop("aux_params", None) is not None:
        notes.append("model.aux_params ignored: the classification head is not used")
    try:
        model = cls(**kwargs)
    except Exception as e:  # SMP raises TypeError, KeyError, ValueError... for a bad argument
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
        raise ModelCardError(
            f"Model card {card.path}: `model:`: expected arguments that build smp.{card.architecture}; "
            f"got {reprlib.repr(kwargs)} and SMP failed with {type(e).__name__}: {e}. Fix: correct the "
            f"model: keys (smp.{card.architecture} takes {', '.join(params)}) and the encoder name."
        ) from e
    _check_tile_shape(model, card)
    return model


def _check_tile_shape(model, card):
    if not getattr(model, "requires_divisible_input_shape", False):
        return
    stride = getattr(getattr(model, "encoder", None), "output_stride", None)
    if not isinstance(stride, int) or stride <= 1:
        return
    h, w = card.tile_shape
    if h % stride or w % stride:
        fixed = [-(-h // stride) * stride, -(-w // stride) * stride]
        raise ModelCardError(
            f"Model card {card.path}: `tiling.model_input_shape`: expected a height and width divisible by "
            f"{stride} (the encoder's output stride); got {list(card.tile_shape)}. Fix: use e.g. {fixed}."
        )


def add_head_dropout(model, card):
    """Give an architecture without a dropout argument a ``Dropout2d(p)`` in front of its head (see module)."""
    p = card.dropout_p
    if p is None or dropout_argument(type(model)) is not None:
        return
    torch = import_torch()
    from torch.nn.modules.dropout import _DropoutNd

    head = getattr(model, "segmentation_head", None)
    existing = [m for m in head.modules() if isinstance(m, _DropoutNd)] if head is not None else []
    if existing:
        for module in existing:
            module.p = p
    elif p == 0:
        return
    elif isinstance(head, torch.nn.Sequential):
        model.segmentation_head = torch.nn.Sequential(
            OrderedDict([("mc_dropout", torch.nn.Dropout2d(p))] + list(head.named_children()))
        )
    else:
        raise ModelCardError(
            f"Model card {card.path}: `model.decoder_dropout`: expected an architecture whose segmentation head "
            f"can take a dropout layer; got {card.architecture} with a {type(head).__name__}. Fix: remove "
            "decoder_dropout (use TTA instead) or choose another architecture."
        )
