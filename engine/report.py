"""Write the evaluation figures as JSON and as one self-contained HTML page.

The HTML needs no network: every plot is a PNG embedded as base64, drawn with ``matplotlib.figure.Figure`` on an
Agg canvas (no pyplot state, safe from worker threads). Each plot is ``<figure id="fig-…">`` holding
``<img id="img-…">`` (ids in ``FIGURE_IDS``); tables carry ids from ``TABLE_IDS``. The threshold plot and table
exist only for binary models, the preview only when the results carry one (:func:`engine.evaluation
.evaluate_rasters` adds it). Both files are written to a temporary file in the target folder, then moved into
place with ``os.replace``, so a failure never leaves a half-written file.
"""

import base64
import html
import io
import json
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .raster_io import check_output_folder, write_text_atomic

__all__ = ["write_report", "render_html", "to_plain", "FIGURE_IDS", "TABLE_IDS"]

FIGURE_IDS = {
    "reliability": "fig-reliability",
    "uncertainty_histogram": "fig-uncertainty-histogram",
    "uncertainty_boxplot": "fig-uncertainty-boxplot",
    "risk_coverage": "fig-risk-coverage",
    "threshold": "fig-threshold",
    "preview": "fig-preview",
}
TABLE_IDS = {
    "summary": "tbl-summary",
    "per_class": "tbl-per-class",
    "reliability": "tbl-reliability",
    "uncertainty": "tbl-uncertainty",
    "threshold": "tbl-threshold",
}
_PREVIEW_ARRAYS = ("uncertainty", "wrong")
_SUMMARY_KEYS = (
    ("n_classes", "Classes C"),
    ("n_pixels", "Evaluated pixels N"),
    ("n_errors", "Wrong pixels"),
    ("n_ignored", "Ignored pixels (reference = ignore value)"),
    ("n_invalid", "Invalid pixels (NoData)"),
    ("accuracy", "Overall accuracy"),
    ("mean_dice", "Mean Dice (classes present in the reference)"),
    ("mean_iou", "Mean IoU (classes present in the reference)"),
    ("ece", "ECE (top-label, M equal-width bins)"),
    ("mce", "MCE"),
    ("n_bins", "Reliability bins M"),
    ("brier", "Brier, multi-class Σ_c (p_c − y_c)², range [0, 2]"),
    ("brier_binary", "Brier, binary (p_1 − y)², range [0, 1]"),
    ("nll", "NLL, mean −log max(p_y, ε)"),
    ("nll_eps", "NLL ε"),
    ("auroc", "AUROC of uncertainty for wrong pixels"),
    ("aurc", "AURC (risk–coverage, most confident first)"),
    ("aurc_optimal", "AURC of a perfect ranking"),
    ("eaurc", "E-AURC = AURC − optimal"),
    ("best_threshold", "Best threshold on p_1 (max Dice)"),
    ("best_threshold_dice", "Dice at the best threshold"),
    ("uncertainty_source", "Uncertainty score"),
    ("uncertainty_range", "Uncertainty histogram range"),
    ("uncertainty_bin_width", "Uncertainty bin width (quantile error bound)"),
    ("uncertainty_out_of_range", "Uncertainty values outside the range (clipped)"),
    ("confidence_bin_width", "Confidence bin width (AURC)"),
)


def write_report(results, html_path, json_path):
    """Write ``results`` (from ``evaluate_rasters`` or ``CalibrationAccumulator.finalize``) to both files.

    The JSON holds every figure as plain types (NaN and undefined values as null); of the preview it keeps the
    factor and shape, not the pixels. Both documents are rendered before either file is touched.

    :raises OutputWriteError: a folder is missing or a file cannot be written; the message names the path.
    """
    json_text = json.dumps(_json_results(results), indent=2, allow_nan=False)
    html_text = render_html(results)
    for path in (json_path, html_path):
        check_output_folder(path)
    write_text_atomic(json_path, json_text)
    write_text_atomic(html_path, html_text)


def to_plain(value):
    """``value`` with numpy scalars/arrays, tuples and paths turned into JSON types; NaN and ±inf become None."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def render_html(results):
    """The self-contained HTML page of ``results`` as a string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Uncertainty evaluation report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}th{background:#eee}"
        "td:first-child,th:first-child{text-align:left}figure{display:inline-block;margin:1em}"
        "figcaption{font-size:90%;max-width:36em}</style></head><body>",
        "<h1>Uncertainty evaluation report</h1>",
    ]
    inputs = results.get("inputs")
    if inputs:
        parts.append("<p>" + "<br>".join(f"<b>{_e(k)}</b>: {_e(_fmt(v))}" for k, v in inputs.items()) + "</p>")
    parts.append("<h2>Figures</h2>")
    parts.append(_table(TABLE_IDS["summary"], ["Figure", "Value"],
                        [[label, _fmt(results.get(key))] for key, label in _SUMMARY_KEYS if key in results]))
    parts.append("<h2>Plots</h2>")
    plots = [
        ("reliability", _plot_reliability, "Reliability diagram: accuracy against mean confidence per bin "
                                           "(top), pixel count per bin (bottom)."),
        ("uncertainty_histogram", _plot_histogram, "Uncertainty of correct and wrong pixels (density)."),
        ("uncertainty_boxplot", _plot_boxplot, "Uncertainty of correct and wrong pixels: box p25–p75, median, "
                                              "whiskers p5–p95 (from the histogram)."),
        ("risk_coverage", _plot_risk_coverage, "Risk–coverage: error rate among the most confident pixels."),
    ]
    if results.get("threshold_sweep"):
        plots.append(("threshold", _plot_threshold, "Dice, precision and recall of class 1 against the "
                                                    "threshold t on p_1 (foreground where p_1 > t)."))
    preview = results.get("preview")
    if preview and preview.get("uncertainty") is not None:
        plots.append(("preview", _plot_preview, f"Uncertainty ({_e(results.get('uncertainty_source'))}), "
                                                f"downsampled ×{preview.get('factor')}; wrong pixels outlined "
                                                "(cells where more than half of the labelled pixels are wrong)."))
    for key, draw, caption in plots:
        parts.append(_figure(FIGURE_IDS[key], draw(results), caption))
    parts.append("<h2>Per class</h2>")
    per = results["per_class"]
    names = results.get("class_names") or [f"class_{c}" for c in range(results["n_classes"])]
    parts.append(_table(TABLE_IDS["per_class"],
                        ["Class", "Support", "Predicted", "Dice", "IoU", "Precision", "Recall"],
                        [[names[c], per["support"][c], per["predicted"][c], per["dice"][c], per["iou"][c],
                          per["precision"][c], per["recall"][c]] for c in range(results["n_classes"])]))
    parts.append("<h3>Confusion matrix (rows reference, columns prediction)</h3>")
    cm = np.asarray(results["confusion_matrix"])
    parts.append(_table("tbl-confusion", ["reference \\ predicted"] + list(names),
                        [[names[r]] + list(row) for r, row in enumerate(cm)]))
    parts.append("<h2>Reliability bins</h2>")
    rel = results["reliability"]
    edges = rel["bin_edges"]
    parts.append(_table(TABLE_IDS["reliability"], ["Bin", "Count", "Mean confidence", "Accuracy", "|Gap|"],
                        [[f"[{edges[m]:.3f}, {edges[m + 1]:.3f})", rel["count"][m], rel["confidence"][m],
                          rel["accuracy"][m], rel["gap"][m]] for m in range(len(rel["count"]))]))
    parts.append("<h2>Uncertainty statistics</h2>")
    stats = results["uncertainty_stats"]
    columns = ["count", "mean", "std", "min", "p5", "p25", "median", "p75", "p95", "max"]
    parts.append(_table(TABLE_IDS["uncertainty"], ["Pixels"] + columns,
                        [[group] + [entry[c] for c in columns] for group, entry in stats.items()]))
    sweep = results.get("threshold_sweep")
    if sweep:
        parts.append("<h2>Threshold sweep (binary)</h2>")
        parts.append(_table(TABLE_IDS["threshold"], ["t", "Dice", "IoU", "Precision", "Recall", "TP", "FP", "FN"],
                            [[sweep[k][j] for k in ("thresholds", "dice", "iou", "precision", "recall", "tp",
                                                    "fp", "fn")] for j in range(len(sweep["thresholds"]))]))
    from .report_decisions import render_decisions_html  # lazy: that module uses this one's helpers

    parts.append(render_decisions_html(results))
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------- plots
def _plot_reliability(res):
    rel = res["reliability"]
    edges = np.asarray(rel["bin_edges"], dtype=float)
    width = np.diff(edges)
    acc = _floats(rel["accuracy"])
    conf = _floats(rel["confidence"])
    fig = Figure(figsize=(6, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1], np.nan_to_num(acc), width=width, align="edge", edgecolor="k", label="accuracy")
    top.bar(edges[:-1], np.nan_to_num(np.abs(conf - acc)), bottom=np.nan_to_num(np.fmin(acc, conf)),
            width=width, align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//",
            label="|accuracy − confidence|")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"ECE {_fmt(res['ece'])}, MCE {_fmt(res['mce'])}")
    top.legend(loc="upper left")
    counts = np.asarray(rel["count"], dtype=float)
    bottom.bar(edges[:-1], counts, width=width, align="edge", edgecolor="k", color="tab:gray")
    if counts.max() > 0:
        bottom.set_yscale("log")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence max_c p_c")
    bottom.set_ylabel("pixels")
    return _png(fig)


def _plot_histogram(res):
    hist = res["uncertainty_histogram"]
    edges = np.asarray(hist["edges"], dtype=float)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key, color in (("correct", "tab:blue"), ("wrong", "tab:red")):
        counts = np.asarray(hist[key], dtype=float)
        if counts.sum() > 0:
            ax.stairs(counts / counts.sum() / np.diff(edges), edges, color=color, fill=True, alpha=0.4,
                      label=f"{key} ({int(counts.sum())} px)")
    ax.set_xlabel(f"uncertainty ({res.get('uncertainty_source')})")
    ax.set_ylabel("density")
    ax.set_title(f"AUROC {_fmt(res.get('auroc'))}")
    ax.legend()
    return _png(fig)


def _plot_boxplot(res):
    stats = []
    for group in ("correct", "wrong"):
        entry = res["uncertainty_stats"][group]
        if entry["count"]:
            stats.append({"label": f"{group}\n({entry['count']} px)", "whislo": entry["p5"], "q1": entry["p25"],
                          "med": entry["median"], "q3": entry["p75"], "whishi": entry["p95"], "mean": entry["mean"],
                          "fliers": []})
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    if stats:
        ax.bxp(stats, showmeans=True, showfliers=False)
    ax.set_ylabel(f"uncertainty ({res.get('uncertainty_source')})")
    return _png(fig)


def _plot_risk_coverage(res):
    curve = res["risk_coverage"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(_floats(curve["coverage"]), _floats(curve["risk"]), color="tab:blue", label="model")
    ax.axhline(1.0 - res["accuracy"], color="k", ls=":", lw=1, label="error rate at full coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (fraction of most confident pixels kept)")
    ax.set_ylabel("risk (error rate)")
    ax.set_title(f"AURC {_fmt(res['aurc'])}, E-AURC {_fmt(res['eaurc'])}")
    ax.legend()
    return _png(fig)


def _plot_threshold(res):
    sweep = res["threshold_sweep"]
    t = _floats(sweep["thresholds"])
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for key in ("dice", "precision", "recall"):
        ax.plot(t, _floats(sweep[key]), marker="o", label=key)
    if res.get("best_threshold") is not None:
        ax.axvline(res["best_threshold"], color="k", ls="--", lw=1,
                   label=f"best t = {res['best_threshold']:.1f} (Dice {res['best_threshold_dice']:.3f})")
    ax.set_xlabel("threshold t on p_1")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return _png(fig)


def _plot_preview(res):
    preview = res["preview"]
    score = np.asarray(preview["uncertainty"], dtype=float)
    wrong = np.asarray(preview["wrong"], dtype=float)
    fig = Figure(figsize=(6, 6 * score.shape[0] / max(score.shape[1], 1) + 0.5))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(score), cmap="magma", interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"uncertainty ({res.get('uncertainty_source')})", shrink=0.8)
    filled = np.nan_to_num(wrong, nan=0.0)
    if 0.0 < filled.max() and filled.min() < 1.0 and min(filled.shape) > 1:
        ax.contour(filled, levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_axis_off()
    return _png(fig)


# ---------------------------------------------------------------------- html helpers
def _png(fig):
    FigureCanvasAgg(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(fig_id, png_b64, caption):
    img_id = "img-" + fig_id[len("fig-"):]
    return (f'<figure id="{fig_id}"><img id="{img_id}" alt="{_e(caption)}" '
            f'src="data:image/png;base64,{png_b64}"><figcaption>{caption}</figcaption></figure>')


def _table(table_id, header, rows):
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _fmt(value):
    value = to_plain(value)
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _e(text):
    return html.escape(str(text), quote=True)


def _floats(values):
    return np.array([np.nan if v is None else v for v in to_plain(values)], dtype=float)


def _json_results(results):
    plain = dict(results)
    preview = plain.get("preview")
    if isinstance(preview, dict):
        plain["preview"] = {k: v for k, v in preview.items() if k not in _PREVIEW_ARRAYS}
    window = plain.get("sample_window")
    if isinstance(window, dict):
        plain["sample_window"] = {k: v for k, v in window.items() if k != "bands"}
    return to_plain(plain)
