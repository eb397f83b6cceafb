"""MC Dropout with masks that depend only on (seed, tile, view, sample), never on batching.

Stock ``nn.Dropout`` draws from the global RNG and takes no generator, so batching tiles or chunking samples
would change every mask. :func:`prepare_mc_dropout` swaps each ``torch.nn.modules.dropout._DropoutNd``
(Dropout, Dropout1d/2d/3d, AlphaDropout, FeatureAlphaDropout) for a :class:`SeededDropout` of the same kind and
rate. Each batch element draws its masks from its own ``torch.Generator``, seeded by :func:`sample_seed`, in
layer order. A result is then the same whatever the batch, chunk, strip or machine split (on one device type).

The layers' run-time state (on/off, the generators, how many samples a shared input stands for) is set only
through :func:`sampling`, a context that restores the previous state on exit; :func:`set_dropout_active` and
:func:`use_generators` are its two common cases.

Kinds (p = drop rate, keep mask m ~ Bernoulli(1 - p)):
- elementwise: y = x · m / (1 - p), one draw per element;
- channelwise (Dropout1d/2d/3d): the same, one draw per channel;
- alpha (AlphaDropout, FeatureAlphaDropout): y = a (x m + α' (1 - m)) + b with α' = -1.7580993408473766,
  a = ((1 - p)(1 + p α'²))^-½, b = -a α' p, keeping zero mean and unit variance for SELU nets.
"""

import contextlib

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

__all__ = [
    "SeededDropout",
    "prepare_mc_dropout",
    "dropout_modules",
    "set_dropout_active",
    "use_generators",
    "sample_seed",
    "make_generators",
    "sampling",
]

_SELU_ALPHA_PRIME = -1.7580993408473766


class SeededDropout(nn.Module):
    """Dropout whose masks come from one generator per batch element (see module docstring)."""

    def __init__(self, p, channelwise=False, alpha=False):
        super().__init__()
        self.p = float(p)
        self.channelwise = bool(channelwise)
        self.alpha = bool(alpha)
        self.active = False
        self.generators = None
        # > 1 when the input holds each element once and the output must hold it input_repeats times
        # (set by engine.prefix_cache for a cached tensor only dropout reads: it is never copied T times).
        self.input_repeats = 1

    def extra_repr(self):
        return f"p={self.p}, channelwise={self.channelwise}, alpha={self.alpha}, active={self.active}"

    def forward(self, x):
        repeats = self.input_repeats
        if not self.active or self.p <= 0.0:
            return x.repeat_interleave(repeats, 0) if repeats > 1 else x
        batch = x.shape[0] * repeats
        keep = self.keep_mask(x, batch)
        if repeats > 1:
            # Sample j of element b is x[b] under mask b·repeats + j: broadcast instead of copying x first.
            keep = keep.view((x.shape[0], repeats) + tuple(keep.shape[1:]))
            x = x.unsqueeze(1)
        if self.alpha:
            a = ((1.0 - self.p) * (1.0 + self.p * _SELU_ALPHA_PRIME**2)) ** -0.5
            b = -a * _SELU_ALPHA_PRIME * self.p
            out = a * (x * keep + _SELU_ALPHA_PRIME * (1.0 - keep)) + b
        else:
            out = x * (keep * (1.0 / (1.0 - self.p)))  # scale the (small) mask, not the activations
        return out.reshape((batch,) + tuple(out.shape[2:])) if repeats > 1 else out

    def keep_mask(self, x, batch):
        """Keep masks (batch, C or 1..., H or 1, ...) for ``batch`` output elements, from the layer's generators."""
        shape = tuple(x.shape[1:2]) + (1,) * (x.dim() - 2) if self.channelwise else tuple(x.shape[1:])
        gens = self.generators
        if gens is None:
            draws = torch.rand((batch,) + shape, device=x.device, dtype=x.dtype)
        else:
            if len(gens) != batch:
                raise RuntimeError(f"SeededDropout got {len(gens)} generators for a batch of {batch}")
            draws = torch.stack([torch.rand(shape, generator=g, device=x.device, dtype=x.dtype) for g in gens])
        return (draws >= self.p).to(x.dtype)


def _replacement(module):
    channelwise = isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.FeatureAlphaDropout))
    alpha = isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout))
    return SeededDropout(module.p, channelwise=channelwise, alpha=alpha)


def prepare_mc_dropout(model):
    """Put ``model`` in eval mode and replace, in place, every ``_DropoutNd`` by a :class:`SeededDropout`.

    BatchNorm and everything else stay in eval; the new layers start inactive (identity) until
    :func:`set_dropout_active`. Returns the number of dropout layers found.
    """
    model.eval()
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _DropoutNd):
                setattr(parent, name, _replacement(child))
                count += 1
            elif isinstance(child, SeededDropout):
                count += 1
    return count


def dropout_modules(model):
    """Every :class:`SeededDropout` in ``model``, in registration order."""
    return [m for m in model.modules() if isinstance(m, SeededDropout)]


def set_dropout_active(model, active):
    """Turn the MC dropout layers on (stochastic) or off (identity, as in eval)."""
    for module in dropout_modules(model):
        module.active = bool(active)


_KEEP = object()


@contextlib.contextmanager
def sampling(target, *, active=None, generators=_KEEP, input_repeats=None):
    """Within the block, the dropout layers of ``target`` (a model, or a list of :class:`SeededDropout`) are
    ``active`` (on or off), draw batch element i from ``generators[i]`` (None: the global RNG) and treat their
    input as holding each element once for ``input_repeats`` output elements; arguments left out are unchanged.
    Every layer's previous state is restored on exit.
    """
    modules = dropout_modules(target) if isinstance(target, nn.Module) else list(target)
    previous = [(m, m.active, m.generators, m.input_repeats) for m in modules]
    for module in modules:
        if active is not None:
            module.active = bool(active)
        if generators is not _KEEP:
            module.generators = generators
        if input_repeats is not None:
            module.input_repeats = int(input_repeats)
    try:
        yield
    finally:
        for module, was_active, was_generators, was_repeats in previous:
            module.active, module.generators, module.input_repeats = was_active, was_generators, was_repeats


def use_generators(model, generators):
    """Within the block, batch element i of every dropout layer draws from ``generators[i]``."""
    return sampling(model, generators=generators)


def sample_seed(base_seed, tile_row, tile_col, view, sample):
    """A 63-bit seed from the run seed and the sample's place on the raster's global tile grid.

    Derived with numpy's SeedSequence, so neighbouring keys give unrelated streams.
    """
    entropy = [int(base_seed) & 0xFFFFFFFFFFFFFFFF, int(tile_row), int(tile_col), int(view), int(sample)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def make_generators(keys, base_seed, device):
    """One fresh generator per key ``(tile_row, tile_col, view, sample)``, on ``device``."""
    gens = []
    for key in keys:
        g = torch.Generator(device=device)
        g.manual_seed(sample_seed(base_seed, *key))
        gens.append(g)
    return gens
