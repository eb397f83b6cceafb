"""Prefix caching must give the samples of the plain network: same generators, same masks, same numbers.

Every comparison draws both paths from freshly made generators with equal keys, so equal results mean the tail
drew the same masks as the full network; a wrong split (a repeated parameter, a lost skip, a mask drawn in a
different order) changes the numbers far beyond the 1e-6 tolerance.
"""

import pytest
import torch
from torch import nn

from seg_uncertainty.engine.dropout import make_generators, prepare_mc_dropout, set_dropout_active
from seg_uncertainty.engine.errors import InvalidOptionError
from seg_uncertainty.engine.prefix_cache import CachedForward, PlainForward, build_mc_forward

smp = pytest.importorskip("segmentation_models_pytorch")

SEED = 7


def _mc(model):
    """The model as MC Dropout runs it: eval, SeededDropout layers, dropout on."""
    prepare_mc_dropout(model)
    set_dropout_active(model, True)
    return model


def _generators(batch, n_repeats, first_sample=0):
    """Generators for output rows b * n_repeats + j, keyed by (tile b, sample first_sample + j)."""
    keys = [(0, b, 0, first_sample + j) for b in range(batch) for j in range(n_repeats)]
    return make_generators(keys, SEED, "cpu")


def _samples(forward, x, n_repeats):
    with torch.inference_mode():
        return forward.tail(forward.prefix(x), n_repeats, _generators(x.shape[0], n_repeats))


def _build(model, x, fuse=False):
    lines = []
    forward = build_mc_forward(model, x, log=lines.append, fuse=fuse)
    return forward, lines


def _assert_same_samples(model, x, n_repeats=3):
    """Unfused split: bit-identical samples. Fused dropout→conv: the same masks, sums in another order."""
    forward, lines = _build(model, x)
    assert forward.cached, lines
    got = _samples(forward, x, n_repeats)
    want = _samples(PlainForward(model), x, n_repeats)
    assert got.shape == want.shape == (x.shape[0] * n_repeats,) + want.shape[1:]
    assert torch.equal(got, want)
    fused, fused_lines = _build(model, x, fuse=True)
    assert fused.cached, fused_lines
    assert torch.allclose(_samples(fused, x, n_repeats), want, atol=1e-5, rtol=1e-5)
    # The samples really differ from each other: dropout was on in both paths.
    assert not torch.allclose(got[0], got[1])
    return forward, lines


def _fpn(classes=3):
    torch.manual_seed(0)
    return _mc(smp.FPN("resnet18", encoder_weights=None, decoder_dropout=0.2, classes=classes))


def test_fpn_decoder_dropout_cached_equals_plain():
    forward, lines = _assert_same_samples(_fpn(), torch.randn(2, 3, 64, 64))
    assert "prefix caching on" in lines[-1]


def test_unet_with_dropout_before_head_cached_equals_plain():
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=3)
    model.segmentation_head = nn.Sequential(nn.Dropout2d(0.3), *model.segmentation_head)
    _assert_same_samples(_mc(model), torch.randn(2, 3, 64, 64))


class _SkipNet(nn.Module):
    """Dropout between stages, a skip from before the first dropout, an AlphaDropout deeper, and a parameter
    used functionally in the tail (it must be read as is, not repeated along the batch)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.drop1 = nn.Dropout(0.25)
        self.enc2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.SELU())
        self.drop2 = nn.AlphaDropout(0.2)
        self.enc3 = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))
        self.side = nn.Conv2d(8, 4, 1)
        self.head = nn.Conv2d(8 + 8 + 4, 3, 1)

    def forward(self, x):
        s = self.stem(x)
        h = self.enc2(self.drop1(s))
        h = self.enc3(self.drop2(h)) * self.scale
        h = nn.functional.interpolate(h, scale_factor=2.0)
        return self.head(torch.cat([h, s, self.side(s)], dim=1))


def test_handwritten_skips_and_two_dropouts_cached_equals_plain():
    torch.manual_seed(0)
    model = _mc(_SkipNet())
    forward, lines = _assert_same_samples(model, torch.randn(2, 3, 64, 64), n_repeats=4)
    # Boundary: the stem output (read by drop1 and the concat) and the side branch.
    assert "2 boundary value(s), 2 dropout layer(s)" in lines[-1]


class _InputDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout2d(0.2)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(self.drop(x))


def test_dropout_at_input_falls_back_to_plain():
    torch.manual_seed(0)
    forward, lines = _build(_mc(_InputDropout()), torch.randn(1, 3, 64, 64))
    assert isinstance(forward, PlainForward)
    assert len(lines) == 1 and "fallback" in lines[0] and "input" in lines[0]


class _DataDependent(nn.Module):
    """Python control flow on a tensor value: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        h = self.conv(x)
        if h.sum() > 0:
            h = h * 2.0
        return self.head(self.drop(h))


def test_untraceable_model_falls_back_and_runs_plain():
    torch.manual_seed(0)
    model = _mc(_DataDependent())
    x = torch.randn(2, 3, 64, 64)
    forward, lines = _build(model, x)
    assert isinstance(forward, PlainForward)
    assert len(lines) == 1 and "fx" in lines[0] and "fallback" in lines[0]
    # The fallback is the plain network: same masks as running the model by hand under the same generators.
    from seg_uncertainty.engine.dropout import use_generators

    with torch.inference_mode(), use_generators(model, _generators(2, 3)):
        want = model(x.repeat_interleave(3, dim=0))
    assert torch.equal(_samples(forward, x, 3), want)


class _BatchSizeInTail(nn.Module):
    """Reads the batch size before the dropout and uses it after: B passed to a tail that runs B · n rows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        batch = x.size(0)
        return self.drop(self.conv(x)).reshape(batch, -1).mean(dim=1)


def test_batch_size_used_in_tail_is_caught_by_the_check():
    torch.manual_seed(0)
    forward, lines = _build(_mc(_BatchSizeInTail()), torch.randn(2, 3, 16, 16))
    assert isinstance(forward, PlainForward)
    assert len(lines) == 1 and "fallback" in lines[0] and "shape" in lines[0]


def test_prefix_runs_once_and_chunks_do_not_change_samples():
    model = _fpn()
    x = torch.randn(1, 3, 64, 64)
    forward, _ = _build(model, x)
    encoder_batches, head_batches = [], []
    model.encoder.conv1.register_forward_hook(lambda m, i, o: encoder_batches.append(i[0].shape[0]))
    model.segmentation_head[0].register_forward_hook(lambda m, i, o: head_batches.append(i[0].shape[0]))
    with torch.inference_mode():
        state = forward.prefix(x)
        chunks = [forward.tail(state, 2, _generators(1, 2, first_sample=j)) for j in (0, 2, 4)]
        whole = forward.tail(state, 6, _generators(1, 6))
    assert encoder_batches == [1]  # the encoder ran once, on the un-repeated batch
    assert head_batches == [2, 2, 2, 6]  # the head ran per chunk, on the repeated batch
    assert torch.equal(torch.cat(chunks), whole)
    fused, _ = _build(model, x, fuse=True)
    with torch.inference_mode():
        state = fused.prefix(x)
        chunks = [fused.tail(state, 2, _generators(1, 2, first_sample=j)) for j in (0, 2, 4)]
        whole = fused.tail(state, 6, _generators(1, 6))
    assert torch.allclose(torch.cat(chunks), whole, atol=1e-6, rtol=0)


def test_build_leaves_model_as_it_was():
    model = _fpn()
    set_dropout_active(model, False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
    forward, _ = _build(model, x)
    assert isinstance(forward, CachedForward)
    assert all(not m.active for m in model.modules() if hasattr(m, "active"))
    assert "check_input_shape" not in model.__dict__
    with pytest.raises(RuntimeError, match="divisible"):  # SMP's own input check still guards the model
        model(torch.randn(1, 3, 60, 60))
    with torch.inference_mode():
        assert torch.equal(model(x), before)


def test_wrong_number_of_generators_is_rejected():
    torch.manual_seed(0)
    model = _mc(_SkipNet())
    x = torch.randn(2, 3, 64, 64)
    forward, _ = _build(model, x)
    for fwd in (forward, PlainForward(model)):
        with torch.inference_mode(), pytest.raises(InvalidOptionError, match="generators"):
            fwd.tail(fwd.prefix(x), 3, _generators(2, 2))
        with torch.inference_mode(), pytest.raises(InvalidOptionError, match="n_repeats"):
            fwd.tail(fwd.prefix(x), 0, [])
