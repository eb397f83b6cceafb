"""Command line: ``python -m seg_uncertainty run mcdropout|tta ...``, the toolbox algorithms without QGIS.

Same parameters, defaults, output names and error messages as ``uncertainty:mcdropout`` and ``uncertainty:tta``
(``--n-samples`` is ``N_SAMPLES``, ``--output-uncertainty`` is ``OUTPUT_UNCERTAINTY``, ...), plus where to run:
in this process (default), on ``--workers N`` local worker processes (a Dask ``LocalCluster`` started and
stopped by the command), or on the Dask cluster whose scheduler runs at ``--scheduler ADDRESS``.

The package must be importable as ``seg_uncertainty``: run it with the folder that holds the plugin on
``PYTHONPATH`` (``PYTHONPATH=~/.local/share/QGIS/QGIS3/profiles/default/python/plugins python -m
seg_uncertainty run ...``), or through ``scripts/seg-uncertainty`` in a checkout, which arranges that.

Exit status: 0 done; 1 the run failed (the message is the one the algorithm raises in QGIS); 2 a command-line
mistake (unknown option, value out of range); 130 cancelled with Ctrl-C. Results go to standard output
(``--json``: the algorithm's result dictionary as JSON), messages and the ``--progress`` bar to standard error.
No QGIS is needed; when QGIS's Python is importable the outputs also get their ``.qml`` styles, as in QGIS.
"""

import argparse
import json
import math
import os
import sys
import time

__all__ = ["main", "build_parser", "output_paths", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_CANCELLED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

# Per algorithm: (dropout sampled, TTA choices, TTA default, uncertainty file suffix) as in algorithms/.
_ALGORITHMS = {
    "mcdropout": (True, ["none", "flip", "d4"], "none", "_mc_uncertainty"),
    "tta": (False, ["d4", "flip"], "d4", "_uncertainty"),
}
_SKIP = "none"
_CONVENTIONAL = "auto"


def build_parser():
    from .engine.constants import MAX_SAMPLES
    from .engine.options import DeviceChoice, UncertaintyMode

    parser = argparse.ArgumentParser(
        prog="python -m seg_uncertainty",
        description="Segmentation with uncertainty (MC Dropout, TTA) over a GDAL raster, without QGIS.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run uncertainty:mcdropout or uncertainty:tta",
        description="Run uncertainty:mcdropout or uncertainty:tta with the toolbox's parameters and defaults.",
        epilog="Exit status: 0 done, 1 failed, 2 bad command line, 130 cancelled (Ctrl-C).",
    )
    run.add_argument("algorithm", choices=sorted(_ALGORITHMS), help="mcdropout (MC Dropout, optionally × TTA) or tta")
    run.add_argument("--input", required=True, help="INPUT: the raster (any GDAL file)")
    run.add_argument("--model", required=True, help="MODEL: the model card (YAML)")
    run.add_argument("--output", required=True,
                     help="OUTPUT: the class map (.tif), or an existing folder: then {input stem}.tif in it")
    run.add_argument("--output-uncertainty", default=_CONVENTIONAL, metavar="PATH",
                     help="OUTPUT_UNCERTAINTY: default {class stem}_mc_uncertainty.tif (mcdropout) or "
                          "{class stem}_uncertainty.tif (tta) beside the class map; 'none' to skip")
    run.add_argument("--output-probabilities", default=_SKIP, metavar="PATH",
                     help="OUTPUT_PROBABILITIES: mean class probabilities; default none; 'auto' for "
                          "{class stem}_probabilities.tif beside the class map")
    run.add_argument("--n-samples", type=int, default=10,
                     help=f"N_SAMPLES: MC Dropout samples per tile and view, 1..{MAX_SAMPLES} (mcdropout only; "
                          "default 10)")
    run.add_argument("--uncertainty-mode", choices=[m.value for m in UncertaintyMode], default="entropy",
                     help="UNCERTAINTY_MODE (default entropy)")
    run.add_argument("--tta-mode", default=None,
                     help="TTA_MODE: mcdropout none|flip|d4 (default none); tta d4|flip (default d4)")
    run.add_argument("--tile-size", type=int, default=0, help="TILE_SIZE in pixels, 0 = the card's (default 0)")
    run.add_argument("--stride", type=int, default=0, help="STRIDE in pixels, 0 = the card's (default 0)")
    run.add_argument("--batch-size", type=int, default=1, help="BATCH_SIZE: tiles per batch (default 1)")
    run.add_argument("--device", choices=[d.value for d in DeviceChoice], default="auto",
                     help="DEVICE (default auto: CUDA when torch sees a GPU)")
    run.add_argument("--seed", type=int, default=None, help="SEED (default: draw one; it is in the output tags)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="SCHEDULER: run on the Dask cluster whose scheduler runs at ADDRESS (tcp://host:8786); "
                            "input, model and outputs must be at the same paths on every worker")
    where.add_argument("--workers", type=int, default=0, metavar="N",
                       help="start N local worker processes (a Dask LocalCluster) for this run")
    run.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                     help="with --workers: threads (and torch threads) per worker process (default 1)")
    run.add_argument("--block-size", type=int, default=0, metavar="PX",
                     help="with --scheduler/--workers: block edge in pixels, rounded down to a multiple of the "
                          "stride (default 0 = 16 strides)")
    run.add_argument("--progress", action="store_true", help="show a progress bar on standard error")
    run.add_argument("--json", action="store_true", help="print the result dictionary as JSON")
    run.add_argument("--no-styles", action="store_true", help="do not write .qml styles even if QGIS is importable")
    return parser


def output_paths(input_path, output, uncertainty, probabilities, uncertainty_suffix):
    """(classes, uncertainty or None, probabilities or None) by the algorithms' naming convention.

    ``output`` an existing folder (or a name whose stem is one) → ``{folder}/{input stem}.tif``. ``uncertainty``
    / ``probabilities``: a path, ``"none"`` (skip) or ``"auto"`` (``{class stem}{suffix}.tif`` /
    ``{class stem}_probabilities.tif`` beside the class map).

    >>> output_paths("/d/scene.tif", "/d/out.tif", "auto", "none", "_mc_uncertainty")
    ('/d/out.tif', '/d/out_mc_uncertainty.tif', None)
    """
    from .engine.output_naming import PROBABILITIES_SUFFIX, class_map_path, companion_path

    classes = class_map_path(str(output), str(input_path))

    def resolve(value, conventional):
        if value is None or str(value).strip().lower() in (_SKIP, ""):
            return None
        if str(value).strip().lower() == _CONVENTIONAL:
            return conventional
        return str(value)

    return (classes, resolve(uncertainty, companion_path(classes, uncertainty_suffix)),
            resolve(probabilities, companion_path(classes, PROBABILITIES_SUFFIX)))


class _ProgressBar:
    """``[#####.....]  50% text`` on one line of standard error, redrawn at most 10 times a second."""

    def __init__(self, stream=sys.stderr, width=30):
        self.stream, self.width, self.last = stream, width, 0.0

    def __call__(self, percent, text):
        now = time.monotonic()
        if now - self.last < 0.1 and percent < 100:
            return
        self.last = now
        filled = int(self.width * max(0.0, min(percent, 100.0)) / 100)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {percent:5.1f}% {text[:60]:<60}")
        self.stream.flush()

    def close(self):
        self.stream.write("\n")
        self.stream.flush()


def _range_problem(name, value, low, high=None):
    """The message QGIS's parameter check gives for a number out of range (see algorithms/engine_bridge.py)."""
    if value >= low and (high is None or value <= high):
        return None
    bounds = f" from {low:g} to {high:g}" if high is not None else f" of at least {low:g}"
    return f"{name}: expected a whole number{bounds}; got {value!r}. Fix: give a value in that range."


def _check_arguments(parser, args):
    from .engine.constants import MAX_SAMPLES

    stochastic, tta_choices, tta_default, _ = _ALGORITHMS[args.algorithm]
    args.tta_mode = args.tta_mode or tta_default
    if args.tta_mode not in tta_choices:
        parser.error(f"TTA_MODE: expected one of {', '.join(tta_choices)} for {args.algorithm}; got {args.tta_mode!r}.")
    checks = [("TILE_SIZE", args.tile_size, 0, None), ("STRIDE", args.stride, 0, None),
              ("BATCH_SIZE", args.batch_size, 1, None), ("--workers", args.workers, 0, None),
              ("--threads-per-worker", args.threads_per_worker, 1, None), ("--block-size", args.block_size, 0, None)]
    if stochastic:
        checks.append(("N_SAMPLES", args.n_samples, 1, MAX_SAMPLES))
    if args.seed is not None:
        checks.append(("SEED", args.seed, 0, None))
    for name, value, low, high in checks:
        problem = _range_problem(name, value, low, high)
        if problem:
            parser.error(problem)


def _write_styles(card, summary, classes, uncertainty, log):
    """The ``.qml`` side-cars the algorithms write, when QGIS's Python is importable (else a note)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from qgis.core import QgsApplication
    except ImportError:
        log("QGIS's Python is not importable here: no .qml styles written (the rasters are complete).")
        return
    if QgsApplication.instance() is None:
        QgsApplication.setPrefixPath("/usr", True)
        _write_styles.app = QgsApplication([], False)
        _write_styles.app.initQgis()
    from .algorithms.styling import class_renderer, uncertainty_renderer, write_qml

    names, colors = list(card.class_names), list(card.class_colors)
    write_qml(classes, lambda layer: class_renderer(layer, names, colors))
    if uncertainty:
        top = summary.uncertainty_max
        write_qml(uncertainty, lambda layer: uncertainty_renderer(layer, top))


def _log(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _start_cluster(args, log):
    """(client, cluster or None): a connection to ``--scheduler``, or a LocalCluster of ``--workers`` processes."""
    from .engine.distributed import _import_distributed, connect_scheduler

    if args.scheduler:
        return connect_scheduler(args.scheduler), None
    distributed = _import_distributed()
    import logging

    cluster = distributed.LocalCluster(
        n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
        dashboard_address=None, silence_logs=logging.ERROR,
        env={"OMP_NUM_THREADS": str(args.threads_per_worker)},
    )
    log(f"Started a local Dask cluster: {args.workers} worker process(es) × {args.threads_per_worker} thread(s).")
    return distributed.Client(cluster, set_as_default=False), cluster


def _run(args, progress, log):
    from .engine.inference import OutputPaths, predict_uncertainty
    from .engine.model_card import load_model_card
    from .engine.model_loading import load_model, resolve_device
    from .engine.raster_io import describe_raster_problem
    from .engine.errors import RasterInputError

    stochastic, _, _, suffix = _ALGORITHMS[args.algorithm]
    problem = describe_raster_problem(args.input)
    if problem:
        raise RasterInputError(problem)
    classes, uncertainty, probabilities = output_paths(
        args.input, args.output, args.output_uncertainty, args.output_probabilities, suffix
    )
    outputs = OutputPaths(classes, uncertainty, probabilities)
    options = dict(
        n_samples=args.n_samples if stochastic else 1, mode=args.uncertainty_mode, tta=args.tta_mode,
        stochastic=stochastic, tile=(args.tile_size,) * 2 if args.tile_size > 0 else None,
        stride=(args.stride,) * 2 if args.stride > 0 else None, batch_size=args.batch_size, seed=args.seed,
        progress=progress, log=log,
    )
    log("Loading the model")
    card = load_model_card(args.model)
    if args.scheduler or args.workers:
        from .engine.distributed import predict_uncertainty_distributed

        client, cluster = _start_cluster(args, log)
        try:
            summary = predict_uncertainty_distributed(
                client, args.input, card.path, outputs, device=args.device,
                block_size=args.block_size or None, **options,
            )
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        loaded = load_model(card, resolve_device(args.device))
        for warning in loaded.warnings:
            if stochastic or "no dropout layer" not in warning:  # TTA needs no dropout
                log(f"Warning: {warning}")
        summary = predict_uncertainty(args.input, loaded, outputs, **options)
    log(
        f"Done in {summary.seconds:.1f} s ({summary.seconds / max(summary.megapixels, 1e-9):.2f} s/Mpx) on "
        f"{summary.device}; {summary.n_tiles} tiles, {summary.n_skipped} skipped as NoData; uncertainty "
        f"min {summary.uncertainty_min:.4g}, mean {summary.uncertainty_mean:.4g}, max {summary.uncertainty_max:.4g}."
    )
    if not args.no_styles:
        _write_styles(card, summary, classes, uncertainty, log)
    return {
        "OUTPUT": classes,
        "OUTPUT_UNCERTAINTY": uncertainty,
        "OUTPUT_PROBABILITIES": probabilities,
        "UNCERTAINTY_MIN": summary.uncertainty_min,
        "UNCERTAINTY_MEAN": summary.uncertainty_mean,
        "UNCERTAINTY_MAX": summary.uncertainty_max,
        "N_TILES": summary.n_tiles,
        "SEED_USED": summary.seed,
        "DEVICE_USED": summary.device,
    }


def main(argv=None):
    """Parse ``argv`` (default ``sys.argv[1:]``), run, print the results; returns the exit status."""
    from .engine.errors import InferenceCancelled, UncertaintyError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_arguments(parser, args)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    bar = _ProgressBar() if args.progress else None
    try:
        results = _run(args, bar, _log if not bar else (lambda text: (sys.stderr.write("\n"), _log(text))))
    except KeyboardInterrupt:
        _log("\nCancelled (Ctrl-C): no output written.")
        return EXIT_CANCELLED
    except InferenceCancelled as e:
        _log(f"{e} No output written.")
        return EXIT_CANCELLED
    except UncertaintyError as e:
        _log(f"Error: {e}")
        return EXIT_FAILED
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({"results": {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                      for k, v in results.items()}}, indent=2))
    else:
        for key, value in results.items():
            print(f"{key}: {value}")
    return EXIT_OK
