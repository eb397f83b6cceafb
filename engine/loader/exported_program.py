"""``torch.export`` programs (``.pt2``): load, make their dropout seeded MC dropout, check what they return.

TorchScript is deprecated in torch 2.14; ``torch.export`` is its successor. ``torch.export.load`` reads a
program's graph and tensors without unpickling Python objects of the file's choosing, and
``ExportedProgram.module()`` gives a ``torch.fx.GraphModule`` that runs it.

Dropout. An export of a model in eval mode keeps its dropout calls in the graph, with ``train=False``:
``aten.dropout``, ``aten.feature_dropout`` (Dropout1d/2d/3d), ``aten.alpha_dropout``,
``aten.feature_alpha_dropout`` and their in-place ``_`` forms. :func:`load_exported_program` replaces each such
call by a call of a :class:`engine.dropout.SeededDropout` submodule of the same kind and rate, so MC Dropout
runs exactly as for the same network built from an SMP card: identical masks for identical seeds, the
deterministic-prefix cache, batch-independent results. A program whose dropout was decomposed away
(``run_decompositions`` in eval mode leaves a plain copy) has none: ``mcdropout`` then warns as for any model
without dropout, and TTA works as always.

Export recipe (also in the README)::

    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.zeros(2, 3, 256, 256),), dynamic_shapes=({0: batch},))
    torch.export.save(program, "model.pt2")

A dynamic batch dimension is needed (the engine runs views and samples as one batch; an example batch of 1
would be specialised to 1, hence 2); height and width may
stay fixed at the card's tile size.
"""

import types
from pathlib import Path

from ..errors import ModelLoadError

__all__ = ["load_exported_program", "DROPOUT_TARGETS"]

#: aten dropout overload packet names → (channelwise, alpha).
DROPOUT_TARGETS = {
    "dropout": (False, False),
    "dropout_": (False, False),
    "feature_dropout": (True, False),
    "feature_dropout_": (True, False),
    "alpha_dropout": (False, True),
    "alpha_dropout_": (False, True),
    "feature_alpha_dropout": (True, True),
    "feature_alpha_dropout_": (True, True),
}


def _dropout_kind(node):
    if node.op != "call_function":
        return None
    packet = getattr(node.target, "overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(node.target, "__name__", "")
    name = name.split(".")[-1]
    namespace = getattr(packet, "__module__", "") or ""
    if name in DROPOUT_TARGETS and ("aten" in namespace or "aten" in str(node.target)):
        return DROPOUT_TARGETS[name]
    return None


def _seed_dropout(module):
    """Replace every aten dropout call of the GraphModule ``module`` by a SeededDropout submodule; count them."""
    from ..dropout import SeededDropout

    graph = module.graph
    count = 0
    for node in list(graph.nodes):
        kind = _dropout_kind(node)
        if kind is None:
            continue
        channelwise, alpha = kind
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        name = f"mc_dropout_{count}"
        module.add_submodule(name, SeededDropout(float(p), channelwise=channelwise, alpha=alpha))
        with graph.inserting_before(node):
            replacement = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        count += 1
    if count:
        graph.lint()
        module.recompile()
    return count


def _set_training_flags(self, mode=True):
    for sub in self.modules():
        sub.training = bool(mode)
    return self


def load_exported_program(path, device="cpu"):
    """The ``torch.export`` program at ``path`` as a module on ``device`` with seeded dropout; ``(module, notes)``.

    Raises :class:`ModelLoadError` when the file is not a ``torch.export.save`` archive.
    """
    import torch

    path = Path(path)
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad archive
        raise ModelLoadError(
            f"Weights {path}: expected a torch.export program (torch.export.save, .pt2); it cannot be loaded "
            f"({type(e).__name__}: {str(e)[:300]}). Fix: export with torch.export.export and torch.export.save "
            "(see the README), or point the card at a state_dict with a model: section."
        ) from e
    module = program.module()
    # The unlifted module refuses train()/eval(); its graph is fixed in the mode it was exported in (BatchNorm
    # with running statistics), so the flags only matter to the SeededDropout layers, which ignore them.
    module.train = types.MethodType(_set_training_flags, module)
    module.eval = types.MethodType(lambda self: self.train(False), module)
    count = _seed_dropout(module)
    notes = []
    if count:
        notes.append(f"torch.export program: {count} dropout call(s) replaced by seeded MC dropout layers")
    try:
        module.to(device)
    except Exception as e:  # noqa: BLE001 - some programs pin their device
        raise ModelLoadError(f"Weights {path}: the exported program cannot be moved to {device} ({e}). Fix: "
                             "export it on the CPU.") from e
    return module, notes
