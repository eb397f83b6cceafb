"""Write a real pytorch-segmentation-models-trainer 1.4.0 config and Lightning checkpoint for the tests.

The artefacts in ``tests/data/trainer/`` are what a user of the trainer has: a Hydra config in the shape of the
trainer's ``conf/examples/mc_dropout_inference.yaml`` (plus the training keys its ``Model`` reads) and a
``.ckpt`` written by Lightning from the trainer's own ``Model`` after a few optimisation steps on synthetic
tiles. Nothing in them is imitated: the checkpoint's ``hyper_parameters`` hold the OmegaConf ``DictConfig``
that the trainer's ``save_hyperparameters`` stores, which is why ``torch.load(weights_only=True)`` refuses it.

The trainer needs Python >= 3.12 by its metadata and pulls a large stack (geopandas, albumentations, ...),
none of which may enter the plugin's environment. So this script, run with any Python 3.11+:

1. creates a separate virtual environment (default ``build/trainer-venv``; never the plugin's ``.venv``),
2. installs torch 2.14.1, torchvision 0.29.1, segmentation-models-pytorch 0.6.0 and the trainer's declared
   dependencies, then the trainer 1.4.0 itself without its ``Requires-Python`` check (its code runs on 3.11),
3. re-runs itself inside that environment, which composes the config with Hydra, builds the trainer's
   ``Model``, trains 3 steps with Lightning on the CPU and saves ``trainer_fpn.ckpt`` with
   ``Trainer.save_checkpoint(..., weights_only=True)`` (no optimiser state: 1 MB instead of 3).

Usage: ``python3 scripts/make_trainer_checkpoint.py [--venv DIR] [--out DIR]``. Takes about 10 minutes the
first time (mostly pip), seconds afterwards.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
TRAINER = "pytorch-segmentation-models-trainer==1.4.0"
PINNED = ["torch==2.14.1", "torchvision==0.29.1", "segmentation-models-pytorch==0.6.0"]
# The trainer's declared dependencies (its wheel's Requires-Dist, extras left out), installed with the normal
# Requires-Python checks so that pip picks releases that support the interpreter.
TRAINER_DEPS = [
    "albumentations>=1.4.0", "bidict==0.21.2", "click>=8.0.0", "colorama==0.4.5", "cython>=3.0.0",
    "descartes==1.1.0", "fastapi>=0.100.0", "geoalchemy2>=0.13.0", "geopandas>=1.1.0", "h3<5,>=3.7.0",
    "httpx>=0.23.0", "hydra-core>=1.3.0", "kornia", "matplotlib", "multiprocess==0.70.19", "ninja>=1.11.0",
    "numba", "numpy", "opencv-python-headless", "optuna>=3.0.0", "pandas", "pillow", "plotly>=5.0.0",
    "psycopg2-binary", "pycocotools", "pydantic-settings>=2.0.0", "pyogrio>=0.7.2", "python-multipart==0.0.28",
    "pytorch-lightning>=2.4.0", "pytorch-toolbelt==0.4.3", "pyyaml>=5.4", "rasterio", "rtree==1.0.0",
    "ruamel-yaml>=0.18.0", "sahi>=0.10.4", "scikit-image>=0.21.0", "scikit-learn>=1.3.2", "scipy",
    "seaborn==0.13.2", "shapely>=2.0.0", "similaritymeasures==1.4.0", "skan>=0.11.0", "swifter==1.0.9",
    "tensorboardx", "torchmetrics", "tqdm", "typing-extensions>=4.0.0", "uvicorn>=0.20.0", "wget==3.2",
]

#: The config a trainer user has: model, loss/optimiser/trainer keys for training, the MC Dropout inference
#: processor and normalisation of mc_dropout_inference.yaml, and paths left as ??? for the command line.
CONFIG = """\
# Written by scripts/make_trainer_checkpoint.py for pytorch-segmentation-models-trainer 1.4.0.
defaults:
  - _self_

model:
  _target_: segmentation_models_pytorch.FPN
  encoder_name: tu-mobilenetv3_small_050
  encoder_weights: null
  in_channels: 3
  classes: 3
  decoder_pyramid_channels: 32
  decoder_segmentation_channels: 32
  decoder_dropout: 0.2

pl_model:
  _target_: pytorch_segmentation_models_trainer.model_loader.model.Model

loss:
  _target_: torch.nn.CrossEntropyLoss

optimizer:
  _target_: torch.optim.AdamW
  lr: 0.001
  weight_decay: 0.0001

hyperparameters:
  batch_size: 2
  epochs: 1

pl_trainer:
  max_epochs: 1
  accelerator: cpu

device: cpu
seed: 20261123

inference_processor:
  _target_: {processor}
  n_samples: 6
  uncertainty_mode: mutual_information
  export_uncertainty_map: true
  num_classes: 3
  model_input_shape: [64, 64]
  step_shape: [48, 48]
  tile_weight: gaussian
  output_uncertainty_dir: ${output_path}

normalize_mean: [0.485, 0.456, 0.406]
normalize_std: [0.229, 0.224, 0.225]

model_path: ???
image_path: ???
output_path: ???
""".replace("{processor}", "pytorch_segmentation_models_trainer.tools.inference.mc_dropout_inference_processor."
            "MCDropoutInferenceProcessor")


def _in_trainer_env():
    try:
        import pytorch_segmentation_models_trainer  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means: not the trainer's environment
        return False
    return True


def _bootstrap(venv):
    """Create ``venv`` and install the trainer into it (idempotent)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    marker = venv / ".trainer-installed"
    if not marker.exists():
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        subprocess.run(pip + PINNED + TRAINER_DEPS, check=True)
        subprocess.run(pip + ["--no-deps", "--ignore-requires-python", TRAINER], check=True)
        marker.touch()
    return python


def _synthetic_tiles(n, seed):
    """A DataLoader of tiles whose class is a function of colour, so a few steps move the weights."""
    import torch

    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        image = torch.rand((3, 64, 64), generator=g)
        samples.append({"image": image, "mask": image.argmax(dim=0)})
    return torch.utils.data.DataLoader(samples, batch_size=2)


def _write_artefacts(out):
    """Inside the trainer's environment: compose the config with Hydra, train 3 steps, save the checkpoint."""
    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from pytorch_segmentation_models_trainer.model_loader.model import Model

    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "trainer_fpn.yaml"
    config_path.write_text(CONFIG, encoding="utf-8")
    with initialize_config_dir(config_dir=str(out), version_base=None):
        cfg = compose(config_name="trainer_fpn")
    torch.manual_seed(cfg.seed)
    model = Model(cfg)
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         limit_val_batches=0, num_sanity_val_steps=0,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, train_dataloaders=_synthetic_tiles(6, cfg.seed))
    ckpt = out / "trainer_fpn.ckpt"
    trainer.save_checkpoint(str(ckpt), weights_only=True)
    import pytorch_segmentation_models_trainer as psmt

    print(f"trainer {getattr(psmt, '__version__', '1.4.0')}, lightning {pl.__version__}, torch "
          f"{torch.__version__}: wrote {config_path} and {ckpt} ({ckpt.stat().st_size} bytes)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / "build" / "trainer-venv")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "trainer")
    args = parser.parse_args(argv)
    if _in_trainer_env():
        _write_artefacts(args.out.resolve())
        return 0
    python = _bootstrap(args.venv.resolve())
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(python), __file__, "--venv", str(args.venv), "--out", str(args.out)],
                          env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
