"""Deterministic-prefix caching for MC Dropout: run what no dropout touches once, repeat it, sample the rest.

(~400 lines, a third of them this explanation: the graph split, its one-off check and its limits are one
algorithm; the dropout-into-conv fusion lives in :mod:`engine.dropout_fusion`.)

Why. With MC Dropout every one of the T samples of a tile reruns the network, yet everything upstream of the first
dropout output is the same in all T of them. baal's layer cache exploits this and reports about 2× on GPU; the
gain grows with how late the dropout sits. With a per-sample cost of P for the deterministic part (the *prefix*)
and Q for the rest (the *tail*), T samples cost

.. math::

    \\text{plain} = T (P + Q), \\qquad \\text{cached} = P + T (Q + R), \\qquad
    \\text{speed-up} = \\frac{T (P + Q)}{P + T (Q + R)} \\xrightarrow{Q, R \\ll P} T,

where R is the cost of materialising the boundary tensors T times. With dropout just before the segmentation
head (SMP FPN's ``decoder_dropout``, or a ``Dropout2d`` in front of a Unet head) Q is one small convolution and
the speed-up approaches T; with dropout in the encoder it falls towards 1. On CPU the tail is memory-bound
(repeat, mask multiply, head, upsampling over B·n full-size tensors), so R and Q are not negligible: measured at
512×512, T = 20, 2 threads, prefix + 20 tail samples cost about 2 plain passes for FPN and Unet alike.
Memory: a tail call with ``n_repeats = n`` holds n copies of the boundary tensors (FPN at 512×512: 128 × 128 × 128
floats = 8 MiB per copy; Unet with dropout before the head: 16 × 512 × 512 = 16 MiB) plus the temporaries of
the tail, so callers chunk the T samples; on CPU chunks of 1 to 5 were as fast as or faster than 20 (smaller
temporaries stay in cache). Chunking changes no result (see below).

How. The model, after :func:`engine.dropout.prepare_mc_dropout`, is traced with ``torch.fx`` by a tracer that
keeps each :class:`~engine.dropout.SeededDropout` as one leaf call. The *tail* is every graph node reachable from
a dropout output; the *prefix* is every other node. The *boundary* is the set of input-dependent prefix nodes the
tail reads: :meth:`CachedForward.prefix` returns their values, :meth:`CachedForward.tail` repeats every tensor
among them ``n_repeats`` times along the batch dimension (``repeat_interleave``, so the copy is materialised and
in-place ops downstream cannot touch the cache), passes non-tensor values (shapes, ints) unchanged and runs the
tail nodes. Prefix nodes that do not depend on the input (parameters, constants) are recomputed in the tail
instead of repeated.

Equivalence. The dropout masks come from one ``torch.Generator`` per batch element (see :mod:`engine.dropout`),
drawn in layer order, so for equal generators the tail draws exactly the masks the full network would. Element
``b * n_repeats + j`` of the tail output is sample j of input b, as in ``model(x.repeat_interleave(n, 0))``. The
deterministic values are the same numbers computed at batch B instead of B·n; CPU kernels may block a batch
differently, so agreement is promised to rounding only (tests use ``atol = 1e-6``; on CPU the FPN, Unet and
hand-written test models gave bit-identical samples).

Limits, all caught by the one-off check in :func:`build_mc_forward`, which then falls back to
:class:`PlainForward` and says why through ``log``: models fx cannot trace (Python control flow on tensor
values), a tail that uses a batch size read in the prefix (``x.size(0)`` passed as an int is B, not B·n), a
prefix op that mutates in place a tensor the tail read earlier. SMP's ``check_input_shape`` (it branches on the
input size, which fx cannot follow) is switched off while tracing only, so the traced graph has no shape check:
the caller guarantees a valid tile size.
"""

import contextlib
import copy

import torch
from torch import fx
from torch.utils import _pytree as pytree

from .dropout import SeededDropout, make_generators, sampling, use_generators
from .dropout_fusion import DropoutConv, fusable_dropout_convs
from .errors import InvalidOptionError, UncertaintyError
from .fx_guard import model_calls, tracing

__all__ = [
    "PlainForward",
    "CachedForward",
    "PrefixCacheUnavailable",
    "build_mc_forward",
    "mc_forward_for",
]

# Seed and tile keys of the one-off equivalence check; any fixed values do.
_VERIFY_SEED = 20240611
_VERIFY_REPEATS = 2
_VERIFY_ATOL = 1e-5
_VERIFY_RTOL = 1e-4


class PrefixCacheUnavailable(UncertaintyError, ValueError):
    """The model cannot be split into a cached prefix and a sampled tail (the message says why)."""


def _check_generators(generators, batch, n_repeats):
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
        raise InvalidOptionError(f"n_repeats must be an int >= 1 (samples per input), got {n_repeats!r}")
    if generators is not None and len(generators) != batch * n_repeats:
        raise InvalidOptionError(
            f"generators must hold one torch.Generator per output element, batch {batch} × n_repeats "
            f"{n_repeats} = {batch * n_repeats}, got {len(generators)}; build them with make_generators over "
            f"the keys of element b * n_repeats + j"
        )


class PlainForward:
    """Reference path: every sample reruns the whole network.

    ``prefix(x)`` returns ``x`` itself; ``tail(x, n, generators)`` runs ``model(x.repeat_interleave(n, 0))``
    with batch element ``b * n + j`` (sample j of input b) drawing its dropout masks from ``generators[b * n + j]``.
    """

    cached = False

    def __init__(self, model):
        self.model = model

    def prefix(self, x):
        """The opaque state for :meth:`tail`: here the input batch ``x`` of shape (B, Cin, H, W)."""
        return x

    def tail(self, state, n_repeats, generators):
        """Logits of shape (B · n_repeats, C, H, W), b-major: row ``b * n_repeats + j`` is sample j of input b.

        ``generators``: B · n_repeats ``torch.Generator`` (see :func:`engine.dropout.make_generators`), or None
        for the global RNG (not reproducible across batchings).
        """
        _check_generators(generators, state.shape[0], n_repeats)
        with use_generators(self.model, generators):
            with model_calls():
                return self.model(state if n_repeats == 1 else state.repeat_interleave(n_repeats, dim=0))


class _DropoutLeafTracer(fx.Tracer):
    """fx tracer that records each :class:`SeededDropout` as one ``call_module`` node (kept stochastic)."""

    def is_leaf_module(self, m, module_qualified_name):
        return isinstance(m, SeededDropout) or super().is_leaf_module(m, module_qualified_name)


def _skip_input_check(*args, **kwargs):
    return None


@contextlib.contextmanager
def _input_checks_off(model):
    """Within the block, every submodule's ``check_input_shape`` (SMP) is a no-op; restored on exit.

    SMP's check branches on ``x.shape`` values, which fx cannot follow. The patch is an instance attribute that
    shadows the class method and is removed (or the previous instance attribute put back) afterwards.
    """
    patched = []
    for module in model.modules():
        if not callable(getattr(module, "check_input_shape", None)):
            continue
        had = "check_input_shape" in module.__dict__
        patched.append((module, had, module.__dict__.get("check_input_shape")))
        object.__setattr__(module, "check_input_shape", _skip_input_check)
    try:
        yield
    finally:
        for module, had, previous in patched:
            if had:
                object.__setattr__(module, "check_input_shape", previous)
            else:
                del module.__dict__["check_input_shape"]


def _trace(model):
    """The fx graph of ``model`` and the root that owns its attributes (a shallow copy of ``model``).

    fx stores tensor constants it meets while tracing as new attributes of the root; tracing a shallow copy (which
    shares submodules, parameters and buffers) keeps those off the user's model.
    """
    root = copy.copy(model)
    with tracing(), _input_checks_off(root):
        graph = _DropoutLeafTracer().trace(root)
    return root, graph


def _descendants(start):
    """``start`` plus every node reachable from it through ``users``."""
    seen = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(node.users)
    return seen


def _split(model, fuse=True):
    """Split the traced ``model`` into (prefix module, tail module, description) or raise.

    Raises :class:`PrefixCacheUnavailable` when there is nothing to split, fx errors when tracing fails.
    """
    root, graph = _trace(model)
    nodes = list(graph.nodes)
    dropouts = [
        n for n in nodes if n.op == "call_module" and isinstance(root.get_submodule(n.target), SeededDropout)
    ]
    if not dropouts:
        raise PrefixCacheUnavailable("the traced graph has no dropout layer, so every sample is the same")
    tail = _descendants(dropouts)
    output = next(n for n in nodes if n.op == "output")
    if output not in tail:
        raise PrefixCacheUnavailable("no dropout layer reaches the model output")

    # Input-dependent nodes, in topological order (fx keeps nodes topologically sorted).
    from_input = set()
    for node in nodes:
        if node.op == "placeholder" or any(a in from_input for a in node.all_input_nodes):
            from_input.add(node)

    prefix = [n for n in nodes if n not in tail]
    boundary, constants = [], set()
    for node in prefix:
        if any(user in tail for user in node.users):
            if node in from_input:
                boundary.append(node)
            else:
                constants.add(node)
    if not any(n.op.startswith("call_") and n in from_input for n in prefix):
        raise PrefixCacheUnavailable(
            "dropout acts on the network input, so there is no deterministic prefix to compute once"
        )
    # Constants the tail reads are recomputed there, with everything they are built from.
    stack = list(constants)
    while stack:
        node = stack.pop()
        for arg in node.all_input_nodes:
            if arg not in constants:
                constants.add(arg)
                stack.append(arg)

    # A boundary tensor that only dropout layers read is handed to them once; each layer broadcasts it over
    # the samples while applying its masks (SeededDropout.input_repeats), so it is never copied T times.
    calls = {}
    for n in dropouts:
        calls[n.target] = calls.get(n.target, 0) + 1
    lazy = {}
    for node in boundary:
        users = [u for u in node.users if u in tail]
        if users and all(u in dropouts and calls[u.target] == 1 and u.args[0] is node and len(u.args) == 1
                         and not u.kwargs for u in users):
            lazy[node] = [u.target for u in users]

    fused = fusable_dropout_convs(root, lazy, tail) if fuse else {}

    prefix_graph = fx.Graph()
    env = {}
    for node in prefix:
        env[node] = prefix_graph.node_copy(node, env.__getitem__)
    prefix_graph.output(tuple(env[n] for n in boundary))

    tail_graph = fx.Graph()
    env = {node: tail_graph.placeholder(node.name) for node in boundary}
    modules = {}
    convs = {conv: dropout for dropout, conv in fused.items()}
    for node in nodes:
        if node in fused:
            continue  # folded into the convolution that reads it
        if node in convs:
            dropout = convs[node]
            name = f"mc_fused_dropout_conv_{len(modules)}"
            modules[name] = DropoutConv(root.get_submodule(dropout.target), root.get_submodule(node.target))
            env[node] = tail_graph.call_module(name, (env[dropout.args[0]],))
        elif node in constants or node in tail:
            env[node] = tail_graph.node_copy(node, env.__getitem__)
    tail_root = {}
    for node in tail_graph.nodes:
        if node.op in ("call_module", "get_attr") and node.target not in modules:
            tail_root[node.target] = _get_qualified(root, node.target)
    tail_root.update(modules)

    prefix_module = fx.GraphModule(root, prefix_graph, class_name="MCDropoutPrefix")
    tail_module = fx.GraphModule(tail_root, tail_graph, class_name="MCDropoutTail")
    calls = sum(n.op.startswith("call_") for n in nodes)
    tail_calls = sum(n.op.startswith("call_") for n in tail)
    description = (
        f"{calls - tail_calls} of {calls} graph ops run once per batch, {tail_calls} once per sample; "
        f"{len(boundary)} boundary value(s), {len(dropouts)} dropout layer(s), {len(fused)} fused with the "
        "convolution after it"
    )
    lazy_modules = [[root.get_submodule(t) for t in lazy.get(n, [])] for n in boundary]
    return prefix_module, tail_module, description, lazy_modules


def _get_qualified(root, target):
    """The submodule, parameter or buffer of ``root`` at the dotted path ``target``."""
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _repeat(value, n_repeats):
    """Every tensor in ``value`` repeated ``n_repeats`` times along dim 0 (b-major, a fresh copy)."""
    return pytree.tree_map(
        lambda v: v.repeat_interleave(n_repeats, dim=0) if isinstance(v, torch.Tensor) else v, value
    )


class _CachedState:
    """What :meth:`CachedForward.prefix` returns: the boundary values and the batch size B they belong to."""

    __slots__ = ("values", "batch")

    def __init__(self, values, batch):
        self.values = values
        self.batch = batch


class CachedForward:
    """Prefix once, tail per sample: the same samples as :class:`PlainForward` for equal generators.

    ``CachedForward(model)`` traces and splits ``model`` (already through ``prepare_mc_dropout``); it raises
    :class:`PrefixCacheUnavailable` or the fx tracing error when it cannot. Prefer :func:`build_mc_forward`, which
    also checks the split once and falls back to :class:`PlainForward`. The graph modules share the model's
    submodules, so ``set_dropout_active`` and ``use_generators`` on ``model`` act on them, and later changes to
    the weights are seen; changes to the model's Python code or structure are not (build again).
    """

    cached = True

    def __init__(self, model, fuse=True):
        self.model = model
        self._prefix, self._tail, self.description, self._lazy = _split(model, fuse)

    def prefix(self, x):
        """Run the deterministic part once on x (B, Cin, H, W); returns the opaque state for :meth:`tail`."""
        with model_calls():
            return _CachedState(tuple(self._prefix(x)), int(x.shape[0]))

    def tail(self, state, n_repeats, generators):
        """Logits (B · n_repeats, C, H, W), b-major, from the cached state; see :meth:`PlainForward.tail`.

        May be called any number of times on one state (chunks of samples); the state is never modified.
        """
        _check_generators(generators, state.batch, n_repeats)
        values = [v if modules else _repeat(v, n_repeats) for v, modules in zip(state.values, self._lazy)]
        lazy_modules = [m for modules in self._lazy for m in modules]
        with sampling(lazy_modules, input_repeats=n_repeats), sampling(self.model, generators=generators), \
                model_calls():
            return self._tail(*values)


def _first_line(error, limit=200):
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compare(got, want):
    """None when the two outputs agree to the check's tolerance, else a short reason."""
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    if got_spec != want_spec:
        return f"output structure differs ({got_spec} vs {want_spec})"
    for g, w in zip(got_leaves, want_leaves):
        if isinstance(w, torch.Tensor):
            if not isinstance(g, torch.Tensor) or g.shape != w.shape:
                return f"output shape differs ({getattr(g, 'shape', type(g))} vs {tuple(w.shape)})"
            if not torch.allclose(g, w, atol=_VERIFY_ATOL, rtol=_VERIFY_RTOL):
                return f"outputs differ by up to {(g - w).abs().max().item():.3g}"
        elif g != w:
            return f"output value differs ({g!r} vs {w!r})"
    return None


def _verify(cached, plain, model, example_input):
    """Run both paths once with dropout on and equal generators; None when they agree, else the reason."""
    x = example_input[:2]
    batch = int(x.shape[0])
    keys = [(0, b, 0, j) for b in range(batch) for j in range(_VERIFY_REPEATS)]
    with sampling(model, active=True), torch.inference_mode():
        got = cached.tail(cached.prefix(x), _VERIFY_REPEATS, make_generators(keys, _VERIFY_SEED, x.device))
        want = plain.tail(plain.prefix(x), _VERIFY_REPEATS, make_generators(keys, _VERIFY_SEED, x.device))
    return _compare(got, want)


def build_mc_forward(model, example_input, log=None, fuse=True):
    """A :class:`CachedForward` for ``model`` when its split checks out, else a :class:`PlainForward`.

    ``model`` has been through :func:`engine.dropout.prepare_mc_dropout`; ``example_input`` is one batch of the
    tile size the run will use (its first two elements are used). The split is checked once: prefix + tail with
    ``n_repeats = 2`` against the plain network, dropout on, the same generators, ``torch.allclose(atol=1e-5,
    rtol=1e-4)``; the dropout layers' active flags are restored afterwards. Any failure (no dropout, dropout at
    the input, fx cannot trace the model, the check fails or raises) returns :class:`PlainForward` and calls
    ``log`` with one line that says caching is off and why; success logs one line too. ``log`` is any callable
    taking a string (``feedback.pushInfo``, ``logger.info``) or None.
    """
    say = log if log is not None else (lambda message: None)
    plain = PlainForward(model)
    try:
        cached = CachedForward(model, fuse)
    except PrefixCacheUnavailable as e:
        say(f"MC dropout prefix caching off ({e}); fallback: every sample reruns the whole network")
        return plain
    except Exception as e:  # noqa: BLE001 - any tracing failure only costs speed
        say(
            f"MC dropout prefix caching off: torch.fx could not trace the model ({_first_line(e)}); "
            f"fallback: every sample reruns the whole network"
        )
        return plain
    try:
        reason = _verify(cached, plain, model, example_input)
    except Exception as e:  # noqa: BLE001
        reason = f"the cached graph raised {_first_line(e)}"
    if reason is not None:
        say(
            f"MC dropout prefix caching off: the fx split does not reproduce the full network ({reason}); "
            f"fallback: every sample reruns the whole network"
        )
        return plain
    say(f"MC dropout prefix caching on: {cached.description}")
    return cached


def mc_forward_for(loaded, tile, device, log=None):
    """:func:`build_mc_forward` for ``loaded`` (a LoadedModel) and tiles of ``tile`` px, traced and checked once
    per loaded model, tile shape and device, and reused by every later run (the trace and its check cost
    seconds: on a small raster, or block after block on a cluster worker, more than the tiles themselves).

    Reuse is safe because nothing a run changes is baked into the graph: the dropout masks come from the
    generators each call is given, the active flags belong to the shared modules, and the weights are the
    loaded ones. ``log`` gets the same line as the first build, marked as reused."""
    from .probe import run_probe

    key = (tuple(int(v) for v in tile), str(device))
    found = loaded.mc_forwards.get(key)
    if found is None:
        lines = []
        probe = run_probe(loaded.model, len(loaded.card.bands), tuple(tile), device)[0]
        forward = build_mc_forward(loaded.model, probe, log=lines.append)
        found = loaded.mc_forwards[key] = (forward, " ".join(lines))
    elif log is not None and found[1]:
        log(found[1] + " (traced earlier for this loaded model; reused)")
        return found[0]
    if log is not None and found[1]:
        log(found[1])
    return found[0]
