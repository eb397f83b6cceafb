"""Train the bundled demo model on synthetic scenes and write the demo scene: the files behind ``make demo``.

Run with the development venv (no QGIS needed)::

    .venv/bin/python scripts/train_demo_model.py            # writes resources/demo/

Writes into ``--out`` (default ``resources/demo/``):

- ``demo_model.safetensors``: float32 state_dict of ``smp.FPN`` with a ``tu-mobilenetv3_small_050`` encoder
  (timm, random init: nothing is downloaded), decoder channels 64/32, ``decoder_dropout`` 0.2, 4 classes;
- ``demo_model.yaml``: its model card (bands 1, 2, 3; scale 255; tiles 256 with step 192);
- ``demo_scene.tif``: a generated 1024×768 RGB uint8 scene, EPSG:32618 at 10 m, NoData 0 outside a tilted
  footprint, DEFLATE-compressed 256×256 tiles;
- ``demo_labels.tif``: the generator's true classes for that scene (uint8, NoData 255, a colour table in the
  card's colours), the reference for ``uncertainty:evaluate``.

Scenes are drawn from four classes, each a smooth random field thresholded at a quantile:

==============  ==================  ===========================================================================
id, class       look                how it is made
==============  ==================  ===========================================================================
0 water         dark blue, smooth   low-pass field below its quantile; turbid patches, faint ripples
1 vegetation    green, textured     land where the parcel field is high; multi-scale texture, dry patches
2 bare soil     bright brown/grey   land where the parcel field is low; blocky fields of soil and built-up
3 cloud         white, soft blobs   cloud opacity ``alpha`` > 0.5; thinner haze over all, a shifted shadow below
==============  ==================  ===========================================================================

Borders are soft: a pixel's colour mixes the classes with memberships ``m = sigmoid((f - t) / w)`` and its
label is the class with ``m > 0.5``, so pixels near a border (and under haze or cloud shadow) are genuinely
ambiguous. Everything is seeded (numpy ``default_rng``, ``torch.manual_seed``) and torch uses one thread on any
machine, so two runs on the same software write the same files (``torch.use_deterministic_algorithms`` is not
needed on the CPU and would make training 2-3 times slower).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["make_scene", "tilted_footprint", "build_model", "train", "write_scene", "write_model", "main"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "resources" / "demo"

CLASSES = (
    ("water", "#1f78b4"),
    ("vegetation", "#33a02c"),
    ("bare soil", "#b15928"),
    ("cloud", "#d9d9d9"),
)
IGNORE = 255  # label of NoData pixels (training ignores them; the label raster's NoData)

MODEL_KWARGS = {
    "encoder_name": "tu-mobilenetv3_small_050",
    "encoder_weights": None,
    "in_channels": 3,
    "classes": len(CLASSES),
    "decoder_pyramid_channels": 64,
    "decoder_segmentation_channels": 32,
    "decoder_dropout": 0.2,
}
TILING = {"model_input_shape": [256, 256], "step_shape": [192, 192]}

SEED = 20240517
SCENE_SHAPE = (768, 1024)  # (height, width) of the demo scene
CRS = "EPSG:32618"
ORIGIN = (584000.0, 4512000.0)  # upper-left corner, UTM 18N metres
PIXEL_SIZE = 10.0


# --- scene generator (numpy only) -------------------------------------------------------------------------


def _smooth(rng, shape, sigma):
    """White noise low-passed with a Gaussian of ``sigma`` pixels (FFT, periodic), scaled to mean 0, std 1."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy ** 2 + fx ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=shape)
    return (field - field.mean()) / field.std()


def _blocks(rng, shape, size):
    """Piecewise-constant field of ``size``-pixel blocks at a random offset, values ~ N(0, 1) per block."""
    h, w = shape
    oy, ox = rng.integers(0, size, 2)
    coarse = rng.standard_normal((h // size + 2, w // size + 2))
    full = np.repeat(np.repeat(coarse, size, axis=0), size, axis=1)
    return full[oy:oy + h, ox:ox + w]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def make_scene(rng, shape, water=0.2, cloud=0.12, vegetation=0.55, noise=2.5):
    """One synthetic scene: ``(image (3, h, w) uint8 in 1..255, labels (h, w) uint8 in 0..3)``.

    ``water`` and ``cloud`` are the fractions of the scene labelled so (quantile thresholds), ``vegetation``
    the share of the remaining land that is vegetated; ``noise`` is the sensor noise std in digital numbers.
    Valid pixels are never 0, so 0 can mark NoData.
    """
    h, w = shape
    yy = np.arange(h)[:, None]
    xx = np.arange(w)[None, :]

    # water: a smooth "elevation" field below its quantile, 3-px soft shore
    elevation = _smooth(rng, shape, 28) + 0.25 * _smooth(rng, shape, 6)
    t_water = np.quantile(elevation, water)
    m_water = _sigmoid((t_water - elevation) / 0.08)
    turbid = _sigmoid(2.0 * _smooth(rng, shape, 14))
    ripples = 0.5 * np.sin(0.35 * xx + 0.2 * yy + 3.0 * _smooth(rng, shape, 10))
    water_rgb = np.stack([
        28 + 30 * turbid + 2 * ripples,
        48 + 32 * turbid + 2 * ripples,
        84 + 6 * turbid + 3 * ripples,
    ])

    # land: parcels (blocky) on a smooth field; high = vegetation, low = bare soil / built-up
    parcels = _blocks(rng, shape, int(rng.integers(20, 40)))
    land = _smooth(rng, shape, 22) + 0.7 * parcels + 0.15 * _smooth(rng, shape, 3)
    t_veg = np.quantile(land, 1.0 - vegetation)
    m_veg = _sigmoid((land - t_veg) / 0.12)

    texture = 0.6 * _smooth(rng, shape, 1.2) + 0.4 * _smooth(rng, shape, 4)
    dry = _sigmoid(1.8 * _smooth(rng, shape, 18) - 1.0)  # patches of dry, browner vegetation
    veg_rgb = np.stack([
        48 + 40 * dry + 14 * texture,
        96 + 8 * dry + 20 * texture,
        40 + 10 * dry + 9 * texture,
    ])

    urban = _sigmoid(2.5 * _blocks(rng, shape, 16) + 2.0 * _smooth(rng, shape, 30) - 1.5)  # 0 soil .. 1 built
    roofs = 0.6 * _blocks(rng, shape, 8)
    grit = _smooth(rng, shape, 1.5)
    soil_rgb = np.stack([
        (1 - urban) * (172 + 10 * grit) + urban * (158 + 22 * roofs),
        (1 - urban) * (132 + 8 * grit) + urban * (156 + 22 * roofs),
        (1 - urban) * (96 + 6 * grit) + urban * (160 + 24 * roofs),
    ])
    surface = m_water * water_rgb + (1 - m_water) * (m_veg * veg_rgb + (1 - m_veg) * soil_rgb)

    # clouds: soft opacity; label cloud where alpha > 0.5; haze below that; shadow offset to the south-east
    cloud_field = _smooth(rng, shape, 24) + 0.3 * _smooth(rng, shape, 5)
    t_cloud = np.quantile(cloud_field, 1.0 - cloud)
    alpha = _smoothstep(0.5 + (cloud_field - t_cloud) / 0.9)
    shadow = np.roll(alpha, (int(rng.integers(12, 24)), int(rng.integers(12, 24))), axis=(0, 1))
    surface = surface * (1.0 - 0.45 * shadow * (1 - alpha))
    cloud_rgb = (232 + 10 * _smooth(rng, shape, 6))[None] * np.array([1.0, 1.0, 1.02])[:, None, None]
    haze = 0.08  # thin haze over the whole scene
    image = (1 - alpha) * ((1 - haze) * surface + haze * 200.0) + alpha * cloud_rgb
    image = image + noise * rng.standard_normal(image.shape)

    labels = np.where(m_veg > 0.5, 1, 2)
    labels = np.where(m_water > 0.5, 0, labels)
    labels = np.where(alpha > 0.5, 3, labels).astype(np.uint8)
    return np.clip(np.rint(image), 1, 255).astype(np.uint8), labels


def tilted_footprint(rng, shape, angle_deg, margin=0.05):
    """Valid mask (h, w) of a rotated rectangle, like the footprint of a satellite scene inside its bbox.

    The rectangle is centred, rotated by ``angle_deg`` and sized so that the image corners fall outside it
    (NoData triangles) while ``margin`` (fraction of each side) is cut from the rectangle's own extent.
    """
    h, w = shape
    a = np.deg2rad(angle_deg)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    x -= (w - 1) / 2
    y -= (h - 1) / 2
    u = x * np.cos(a) + y * np.sin(a)
    v = -x * np.sin(a) + y * np.cos(a)
    return (np.abs(u) <= (0.5 - margin) * w / np.cos(a)) & (np.abs(v) <= (0.5 - margin) * h / np.cos(a))


def _training_scenes(rng, n, shape):
    """``n`` scenes with random class fractions; every other one with a NoData footprint (label IGNORE)."""
    images, labels = [], []
    for i in range(n):
        image, label = make_scene(
            rng, shape,
            water=rng.uniform(0.08, 0.3), cloud=rng.uniform(0.05, 0.25), vegetation=rng.uniform(0.35, 0.7),
            noise=rng.uniform(1.5, 4.0),
        )
        if i % 2:
            valid = tilted_footprint(rng, shape, rng.uniform(-14, 14), margin=rng.uniform(0.0, 0.1))
            image[:, ~valid] = 0
            label[~valid] = IGNORE
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


# --- model ------------------------------------------------------------------------------------------------


def build_model():
    """The demo network, randomly initialised (seed torch first)."""
    import segmentation_models_pytorch as smp

    return smp.FPN(**MODEL_KWARGS)


def _batch(rng, images, labels, batch_size, crop):
    """Random crops with random D4 flips/rotations: (x float32 (b, 3, c, c) in 0..1, y int64 (b, c, c))."""
    n, _, h, w = images.shape
    xs, ys = [], []
    for _ in range(batch_size):
        i = rng.integers(n)
        r, c = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        x = images[i, :, r:r + crop, c:c + crop]
        y = labels[i, r:r + crop, c:c + crop]
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if rng.integers(2):
            x, y = x[:, :, ::-1], y[:, ::-1]
        xs.append(x)
        ys.append(y)
    x = np.ascontiguousarray(np.stack(xs), dtype=np.float32) / 255.0
    y = np.ascontiguousarray(np.stack(ys)).astype(np.int64)
    return x, y


def train(model, images, labels, rng, steps, batch_size, crop, lr, log=print):
    """AdamW with a one-cycle learning rate; cross-entropy ignoring NoData. Returns the last 50 steps' accuracy."""
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    model.train()
    correct = total = 0
    recent = []
    for step in range(1, steps + 1):
        x, y = _batch(rng, images, labels, batch_size, crop)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            known = y != IGNORE
            hits = int((logits.argmax(1) == y)[known].sum())
            correct, total = correct + hits, total + int(known.sum())
            recent = (recent + [(hits, int(known.sum()))])[-50:]
        if step % 100 == 0 or step == steps:
            log(f"step {step:4d}/{steps}: loss {loss.item():.3f}, train accuracy (last 100 steps) "
                f"{correct / max(total, 1):.3f}")
            correct = total = 0
    model.eval()
    return sum(h for h, _ in recent) / max(sum(t for _, t in recent), 1)


def _accuracy(model, image, label, tile=256):
    """Eval-mode (no dropout) accuracy of ``model`` on one scene, predicted in non-overlapping tiles."""
    import torch

    _, h, w = image.shape
    hits = total = 0
    with torch.no_grad():
        for r in range(0, h - tile + 1, tile):
            for c in range(0, w - tile + 1, tile):
                x = torch.from_numpy(image[None, :, r:r + tile, c:c + tile].astype(np.float32) / 255.0)
                y = label[r:r + tile, c:c + tile]
                pred = model(x).argmax(1)[0].numpy()
                known = y != IGNORE
                hits += int((pred == y)[known].sum())
                total += int(known.sum())
    return hits / max(total, 1)


# --- outputs ----------------------------------------------------------------------------------------------


_CARD_TEMPLATE = """\
# Demo model for `make demo`, written by scripts/train_demo_model.py (seed {seed}): trained for a few minutes on
# synthetic scenes from a random-init encoder. Not a model for real imagery.
model:
  _target_: segmentation_models_pytorch.FPN
{model}
weights: {weights}
input: {{bands: [1, 2, 3], scale: 255}}
classes: [{classes}]
tiling: {{model_input_shape: {tile}, step_shape: {step}}}
"""


def _yaml_scalar(value):
    return "null" if value is None else str(value)


def write_model(model, out):
    """Save the float32 state_dict as safetensors and write the model card; returns (weights, card) paths."""
    import yaml
    from safetensors.torch import save_file

    weights = out / "demo_model.safetensors"
    state = {k: v.detach().contiguous().float() if v.is_floating_point() else v.detach().contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"generator": f"scripts/train_demo_model.py, seed {SEED}"})
    # (one metadata key: safetensors writes several in a random order, and the file should be reproducible)
    os.chmod(weights, 0o644)  # safetensors creates the file readable by its owner only
    card_text = _CARD_TEMPLATE.format(
        seed=SEED,
        model="\n".join(f"  {k}: {_yaml_scalar(v)}" for k, v in MODEL_KWARGS.items()),
        weights=weights.name,
        classes=", ".join(f'{{name: {name}, color: "{color}"}}' for name, color in CLASSES),
        tile=list(TILING["model_input_shape"]),
        step=list(TILING["step_shape"]),
    )
    expected = {
        "model": {"_target_": "segmentation_models_pytorch.FPN", **MODEL_KWARGS},
        "weights": weights.name,
        "input": {"bands": [1, 2, 3], "scale": 255},
        "classes": [{"name": name, "color": color} for name, color in CLASSES],
        "tiling": TILING,
    }
    if yaml.safe_load(card_text) != expected:  # the template must say exactly what the constants say
        raise RuntimeError(f"the card template does not round-trip:\n{card_text}")
    card_path = out / "demo_model.yaml"
    card_path.write_text(card_text)
    return weights, card_path


def _rgb(color):
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5)) + (255,)


def write_scene(image, labels, valid, out):
    """Write the demo scene (NoData 0) and its labels (NoData 255) as tiled DEFLATE GeoTIFFs; returns paths."""
    import rasterio
    from rasterio.transform import from_origin

    h, w = labels.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "crs": CRS,
        "transform": from_origin(ORIGIN[0], ORIGIN[1], PIXEL_SIZE, PIXEL_SIZE),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "zlevel": 9,
    }
    scene_path, labels_path = out / "demo_scene.tif", out / "demo_labels.tif"
    image = image.copy()
    image[:, ~valid] = 0
    with rasterio.open(scene_path, "w", count=3, dtype="uint8", nodata=0, predictor=2, photometric="RGB",
                       **profile) as dst:
        dst.write(image)
        dst.descriptions = ("red", "green", "blue")
        dst.update_tags(SOURCE="synthetic scene from scripts/train_demo_model.py", SEED=SEED)
    labels = np.where(valid, labels, IGNORE).astype(np.uint8)
    with rasterio.open(labels_path, "w", count=1, dtype="uint8", nodata=IGNORE, **profile) as dst:
        dst.write(labels, 1)
        dst.write_colormap(1, {i: _rgb(color) for i, (_, color) in enumerate(CLASSES)})  # QGIS shows it paletted
        dst.descriptions = ("class",)
        dst.update_tags(CLASS_NAMES=",".join(name for name, _ in CLASSES), SEED=SEED)
    return scene_path, labels_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default resources/demo)")
    parser.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=128, help="training crop side in pixels (default 128)")
    parser.add_argument("--lr", type=float, default=4e-3)
    args = parser.parse_args(argv)

    import torch

    started = time.perf_counter()
    # One thread, on any machine: the same float reduction order everywhere (reproducible weights), and robust
    # on a shared CPU, where two OpenMP threads that wait for each other ran 10x slower than one (~0.2 s/step).
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)

    images, labels = _training_scenes(rng, 16, (384, 384))
    demo_image, demo_labels = make_scene(rng, SCENE_SHAPE, water=0.18, cloud=0.12, vegetation=0.55, noise=2.5)
    demo_valid = tilted_footprint(rng, SCENE_SHAPE, angle_deg=9.0, margin=0.04)
    print(f"generated 16 training scenes of 384x384 and the {SCENE_SHAPE[1]}x{SCENE_SHAPE[0]} demo scene "
          f"in {time.perf_counter() - started:.1f} s; class fractions (train): "
          f"{np.bincount(labels[labels != IGNORE].ravel(), minlength=4) / (labels != IGNORE).sum()}")

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"smp.FPN({MODEL_KWARGS['encoder_name']}): {n_params} parameters")
    t0 = time.perf_counter()
    train_acc = train(model, images, labels, rng, args.steps, args.batch_size, args.crop, args.lr)
    train_seconds = time.perf_counter() - t0

    demo_eval = demo_image.copy()
    demo_eval[:, ~demo_valid] = 0
    demo_acc = _accuracy(model, demo_eval, np.where(demo_valid, demo_labels, IGNORE))
    print(f"trained {args.steps} steps in {train_seconds:.1f} s; train accuracy {train_acc:.3f}, "
          f"demo scene accuracy (eval mode, 256 tiles) {demo_acc:.3f} (chance: 0.25, majority class "
          f"{np.bincount(demo_labels[demo_valid]).max() / demo_valid.sum():.3f})")

    weights, card = write_model(model, args.out)
    scene, reference = write_scene(demo_image, demo_labels, demo_valid, args.out)
    for path in (weights, card, scene, reference):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(json.dumps({"parameters": n_params, "train_seconds": round(train_seconds, 1),
                      "train_accuracy": round(train_acc, 4), "demo_accuracy": round(demo_acc, 4),
                      "total_seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
