"""Small real torch models for the tests, and helpers that save them with a model card."""

from pathlib import Path

import torch
import yaml
from torch import nn


class PointwiseNet(nn.Module):
    """A per-pixel MLP (1×1 convolutions): receptive field 1, so it is D4-equivariant and tiling-invariant.

    With ``dropout`` > 0 a Dropout2d sits between the two layers (MC Dropout then samples it).
    """

    def __init__(self, in_channels=3, classes=3, hidden=8, dropout=0.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(in_channels, hidden, 1)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(hidden, classes, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 1.5)

    def forward(self, x):
        return self.conv2(self.drop(torch.tanh(self.conv1(x))))


class ShiftNet(nn.Module):
    """A 3×3 convolution with an asymmetric kernel: not rotation-equivariant, so TTA views disagree."""

    def __init__(self, in_channels=3, classes=3, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(in_channels, classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.conv(x)


def write_card(folder, weights, classes=None, model=None, bands=(1, 2, 3), scale=255.0, tile=(64, 64),
               stride=(32, 32), name="model.yaml", extra_input=None):
    """Write a model card YAML beside ``weights``; returns its path."""
    card = {}
    if model is not None:
        card["model"] = model
    card["weights"] = Path(weights).name
    card["input"] = {"bands": list(bands), "scale": scale, **(extra_input or {})}
    if classes is not None:
        palette = ["#1f78b4", "#33a02c", "#e31a1c", "#ff7f00", "#6a3d9a", "#b15928"]
        card["classes"] = [{"name": f"c{i}", "color": palette[i % len(palette)]} for i in range(classes)]
    card["tiling"] = {"model_input_shape": list(tile), "step_shape": list(stride)}
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def save_torchscript(folder, module, example_shape=(1, 3, 64, 64), name="scripted.pt"):
    """Save ``module`` with torch.jit.trace; returns the path."""
    module = module.eval()
    path = Path(folder) / name
    torch.jit.save(torch.jit.trace(module, torch.zeros(example_shape)), str(path))
    return path


def save_smp(folder, architecture="FPN", classes=3, in_channels=3, dropout=0.2, encoder="resnet18", seed=0,
             tile=(64, 64), stride=(32, 32), bands=(1, 2, 3), name="smp"):
    """Build an SMP model with random weights (seeded), save its state_dict and a card; returns the card path."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    kwargs = {"encoder_name": encoder, "encoder_weights": None, "in_channels": in_channels, "classes": classes}
    if dropout is not None:
        kwargs["decoder_dropout"] = dropout
    build_kwargs = dict(kwargs)
    if architecture != "FPN":
        build_kwargs.pop("decoder_dropout", None)
    model = getattr(smp, architecture)(**build_kwargs)
    weights = Path(folder) / f"{name}.pth"
    torch.save(model.state_dict(), weights)
    spec = {"_target_": f"segmentation_models_pytorch.{architecture}", **kwargs}
    return write_card(folder, weights, classes=max(classes, 2) if classes > 1 else 2, model=spec, tile=tile,
                      stride=stride, bands=bands, name=f"{name}.yaml")


def document_paths(node, prefix=()):
    """Every path of keys/indices inside a nested dict/list document (the root is the empty path)."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from document_paths(child, prefix + (key,))


def mutate_document(draw, doc, n_edits, keys, values):
    """Apply ``n_edits`` random edits (replace, delete or add a key) to a nested card document, in place.

    ``draw`` is hypothesis's draw function; ``keys`` and ``values`` are the strategies new keys and values come
    from. Returns ``doc``.
    """
    from hypothesis import strategies as st

    for _ in range(n_edits):
        paths = [p for p in document_paths(doc) if p]
        if not paths:
            break
        target = draw(st.sampled_from(paths))
        parent = doc
        for key in target[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[target[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent[target[-1]] = draw(values)
    return doc
