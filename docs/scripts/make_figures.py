"""Regenerate every figure of the documentation site; never edit the outputs by hand.

    python docs/scripts/make_figures.py                      # all figures (trains the quick start: ~30 s)
    python docs/scripts/make_figures.py --only architecture benchmarks
    python docs/scripts/make_figures.py --quickstart-run runs/quickstart   # reuse a finished run

Outputs, all under ``docs/assets/`` (committed, embedded by the pages):

- ``architecture.png``: JI-ADF drawn from a model built from the ``ji-adf`` preset. Each box's
  text is read off the built modules (class names, backbone, widths, MMFA heads, gate layers), so
  the drawing changes when the code does.
- ``quickstart/*.png`` and ``quickstart/*.md``: the figures and tables of the quick-start run's
  report (``fusionkit train examples/quickstart.yaml --synthetic``), for the evaluation how-to and
  "Reading a report"; the same summary and tables go into README.md's ``quickstart-report`` block.
- ``benchmarks/train_step.png``, ``benchmarks/loading.png`` (the newest ``loading-*.json``): throughput read from the JSON files in
  ``benchmarks/results/``, titled with the device and date each was measured on.
- ``demo/page.png``: the page of ``fusionkit demo`` on the quick-start run (or ``--quickstart-run``)
  after one example case is predicted, captured in headless Chromium by ``make_demo_screenshot.py``
  (needs the ``demo`` extra and Playwright).

Drawn with matplotlib on the Agg canvas (no pyplot, no display, no network): a hand-kept SVG would
drift from the code, and a diagram tool would be one more dependency for one picture.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "docs" / "assets"
RESULTS = REPO / "benchmarks" / "results"
QUICKSTART_FIGURES = ("gate.png", "gradcam.png", "history.png", "confusion_matrix.png", "roc.png", "reliability.png")
PARTS = ("architecture", "quickstart", "benchmarks", "demo")


def _write_png(fig: Figure, path: Path) -> Path:
    """Render ``fig`` on the Agg canvas into ``path`` (written next to it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.png")
    FigureCanvasAgg(fig).print_png(str(partial))
    partial.replace(path)
    return path


# --- architecture -------------------------------------------------------------------------------


def architecture_labels(preset: str = "ji-adf", metadata_width: int = 35) -> dict[str, str]:
    """Box texts of the architecture figure, read off a model built from ``preset`` (random weights).

    Keys: ``derm``, ``clinical``, ``meta`` (inputs), ``enc_derm``, ``enc_clinical``, ``enc_meta``
    (encoders, eq 1), ``f_I``, ``f_M``, ``fusion`` (eq 2, 8-11), ``head_image``, ``head_joint``,
    ``head_meta`` (eq 3), ``decision`` (eq 5), ``final`` (eq 6).
    """
    import fusionkit as fk

    spec = fk.load_preset(preset, {"image_encoder": {"pretrained": False}})
    model = fk.build_model(spec, metadata_width=metadata_width)
    dims = model.feature_dims
    size = spec.image_size
    labels = {
        "derm": f"dermoscopic image D\n(B, 3, {size}, {size})",
        "clinical": f"clinical image C\n(B, 3, {size}, {size})",
        "meta": f"metadata M\n(B, {metadata_width})",
    }
    for name, encoder in model.image_stream.encoders.items():
        labels[f"enc_{name}"] = (
            f"{type(encoder).__name__}\n{spec.image_encoder.display_name}\n-> {encoder.out_dim}  (eq 1)"
        )
    meta_encoder = model.meta_stream.encoder
    hidden = " -> ".join(str(d) for d in (metadata_width, *spec.metadata_encoder.hidden_dims, meta_encoder.out_dim))
    labels["enc_meta"] = f"{type(meta_encoder).__name__}\n{hidden}  (eq 1)"
    labels["f_I"] = f"f_I = [f_D || f_C]\n{spec.image_encoder.combine}, D_I = {dims['image']}"
    labels["f_M"] = f"f_M\nD_M = {dims['meta']}"
    fusion = spec.fusion
    heads = getattr(fusion, "attention_heads", None)
    detail = f"H = {heads}, d_h = {fusion.head_dim}\n" if heads is not None else ""
    labels["fusion"] = (
        f"{type(model.fusion).__name__}  (eq 2, 8-11)\n{detail}f_IM = W_skip[f_I || f_M] + g(o)\nD_IM = {dims['joint']}"
    )
    symbols = {"image": "C_I -> z_I", "joint": "C_IM -> z_IM", "meta": "C_M -> z_M"}
    for branch, head in model.heads.items():
        labels[f"head_{branch}"] = (
            f"{symbols[branch]}  (eq 3)\n{type(head).__name__}: Linear {head.linear.in_features} -> {head.linear.out_features}"
        )
    gate = [layer for layer in model.decision.modules() if hasattr(layer, "in_features")]
    widths = " -> ".join(str(d) for d in (gate[0].in_features, *(layer.out_features for layer in gate)))
    labels["decision"] = (
        f"{type(model.decision).__name__}  (eq 5)\ngate on s = [z_I || z_IM || z_M]\n{widths}, softmax -> alpha"
    )
    labels["final"] = "P_final  (eq 6)\nsum_k alpha_k P_k\n(in log space)"
    return labels


# (x, y, width) of each box in inches, top to bottom along the data flow (fits a text column)
_PLACES = {
    "derm": (1.65, 10.9, 3.0),
    "clinical": (4.95, 10.9, 3.0),
    "meta": (8.25, 10.9, 2.6),
    "enc_derm": (1.65, 9.55, 3.0),
    "enc_clinical": (4.95, 9.55, 3.0),
    "enc_meta": (8.25, 9.55, 2.6),
    "f_I": (3.3, 8.05, 2.6),
    "f_M": (8.25, 8.05, 2.0),
    "fusion": (4.95, 6.45, 3.6),
    "head_image": (1.7, 4.75, 3.1),
    "head_joint": (4.95, 4.75, 3.1),
    "head_meta": (8.2, 4.75, 3.1),
    "decision": (4.95, 3.05, 3.7),
    "final": (4.95, 1.35, 2.6),
}
_COLOURS = {
    "derm": "#e8eef7",
    "clinical": "#e8eef7",
    "meta": "#e8eef7",
    "enc_derm": "#cfe3f7",
    "enc_clinical": "#cfe3f7",
    "enc_meta": "#d9f0d3",
    "f_I": "#f4f4f4",
    "f_M": "#f4f4f4",
    "fusion": "#fde2c4",
    "head_image": "#ececec",
    "head_joint": "#ececec",
    "head_meta": "#ececec",
    "decision": "#f9d3d3",
    "final": "#fff2b3",
}
# (from, to, label, side): arrows go from a box's bottom to the next box's top; the P_I and P_M
# arrows bypass the gate and enter the final box from the left ("l") or right ("r")
_EDGES = [
    ("derm", "enc_derm", "", ""),
    ("clinical", "enc_clinical", "", ""),
    ("meta", "enc_meta", "", ""),
    ("enc_derm", "f_I", "f_D", ""),
    ("enc_clinical", "f_I", "f_C", ""),
    ("enc_meta", "f_M", "", ""),
    ("f_I", "fusion", "", ""),
    ("f_M", "fusion", "", ""),
    ("f_I", "head_image", "f_I", ""),
    ("fusion", "head_joint", "f_IM", ""),
    ("f_M", "head_meta", "f_M", ""),
    ("head_image", "decision", "z_I", ""),
    ("head_joint", "decision", "z_IM", ""),
    ("head_meta", "decision", "z_M", ""),
    ("head_image", "final", "P_I", "l"),
    ("head_meta", "final", "P_M", "r"),
    ("decision", "final", "alpha;  P_IM", ""),
]


def draw_architecture(labels: dict[str, str], path: Path) -> Path:
    """Boxes at fixed places, texts from :func:`architecture_labels`, arrows along the data flow."""
    fig = Figure(figsize=(9.8, 12.0))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 9.8)
    ax.set_ylim(0, 12.0)
    ax.set_axis_off()
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for key, (x, y, w) in _PLACES.items():
        text = labels[key]
        h = 0.2 * len(text.splitlines()) + 0.25
        boxes[key] = (x - w / 2, y - h / 2, w, h)
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=_COLOURS[key],
                edgecolor="#555555",
                linewidth=1.0,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=10, family="DejaVu Sans")
    for start, end, label, side in _EDGES:
        (x0, y0, w0, _h0), (x1, y1, w1, h1) = boxes[start], boxes[end]
        a, b = (x0 + w0 / 2, y0), (x1 + w1 / 2, y1 + h1)
        style = "arc3,rad=0"
        if side:
            a = (x0 + w0 / 2, y0)
            b = (x1, y1 + h1 / 2) if side == "l" else (x1 + w1, y1 + h1 / 2)
            style = f"angle,angleA={-90},angleB={0 if side == 'l' else 180},rad=8"
        ax.add_patch(
            FancyArrowPatch(
                a,
                b,
                arrowstyle="-|>",
                mutation_scale=13,
                linewidth=1.0,
                color="#333333",
                shrinkA=2,
                shrinkB=2,
                connectionstyle=style,
            )
        )
        if label:
            mid = (a[0] + 0.5 * (b[0] - a[0]), a[1] + 0.5 * (b[1] - a[1])) if not side else (a[0], b[1] + 0.6)
            ax.text(
                mid[0],
                mid[1],
                label,
                fontsize=9,
                color="#1f4e8c",
                ha="center",
                va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
            )
    ax.text(
        0.15,
        11.85,
        "JI-ADF as fusionkit builds it (preset ji-adf; eq numbers are the paper's)",
        fontsize=11,
        weight="bold",
        va="top",
    )
    ax.text(
        0.15,
        0.3,
        "Loss (eq 7): CE(P_final, y) + 0.5 L_IM + 0.25 L_I + 0.25 L_M,\nL_k the cross-entropy of head k (eq 4)",
        fontsize=9.5,
        color="#444444",
        va="bottom",
    )
    return _write_png(fig, path)


# --- quick start --------------------------------------------------------------------------------


def _section(markdown: str, title: str) -> str:
    """The body of the ``## title`` section of a report, without its heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, flags=re.S | re.M)
    if match is None:
        raise SystemExit(f"report.md: no section '## {title}'")
    return match.group(1).strip() + "\n"


def quickstart_assets(run_dir: Path | None, out: Path, readme: Path | None = None) -> list[Path]:
    """Copy the quick-start report's figures and tables into ``out``; train the run first if needed.

    With ``readme``, also rewrite its ``quickstart-report`` block with the summary and tables.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            from fusionkit.evaluate import train_and_evaluate
            from fusionkit.runtime.config import load_run_config

            run_dir = Path(tmp) / "quickstart"
            config = load_run_config(REPO / "examples" / "quickstart.yaml")
            train_and_evaluate(config, run_dir=run_dir, synthetic=True, progress=False)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in QUICKSTART_FIGURES:
            written.append(Path(shutil.copyfile(run_dir / name, out / name)))
        report = (run_dir / "report.md").read_text()
        summary = report.split("## ", 1)[0].split("\n", 1)[1].strip()  # below the title, above the first section
        summary = re.sub(r"Run `[^`]*`, checkpoint", "Checkpoint", summary)
        summary = f"{_provenance()}\n\n{summary}"
        pieces = {
            "summary.md": summary + "\n",
            "metrics.md": _section(report, "Metrics (Table 5 layout)").split("\nAlso as")[0].strip() + "\n",
            "ablation.md": _section(report, "Modality ablation at inference"),
            "gate.md": _section(report, "What the fusion gate trusted"),
        }
        for name, text in pieces.items():
            (out / name).write_text(text)
            written.append(out / name)
    if readme is not None:
        block = "\n".join(
            [pieces["summary.md"], pieces["metrics.md"], "Modality ablation at inference:\n", pieces["ablation.md"]]
        )
        written.append(_replace_block(readme, "quickstart-report", block))
    return written


def _replace_block(path: Path, name: str, body: str) -> Path:
    """Rewrite what lies between the ``<!-- NAME:start ... -->`` and ``<!-- NAME:end -->`` lines."""
    text = path.read_text()
    match = re.search(rf"(<!-- {name}:start[^\n]*-->\n).*?(<!-- {name}:end -->)", text, flags=re.S)
    if match is None:
        raise SystemExit(f"{path}: no '<!-- {name}:start -->' ... '<!-- {name}:end -->' block")
    path.write_text(text[: match.start()] + match.group(1) + body.strip() + "\n" + match.group(2) + text[match.end() :])
    return path


def _provenance() -> str:
    """One line naming when and where the quick-start run behind the figures ran."""
    import datetime
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    return (
        f"Generated by `docs/scripts/make_figures.py` on {datetime.date.today().isoformat()}: "
        f"`fusionkit train examples/quickstart.yaml --synthetic` on {os.cpu_count()} CPU cores ({cpu}), "
        f"torch {torch.__version__}. Synthetic data and a tiny backbone: the numbers show that the "
        "pipeline works, not how good JI-ADF is."
    )


# --- benchmarks ---------------------------------------------------------------------------------


def _short_device(device: Any) -> str:
    if isinstance(device, dict):
        return f"{device.get('cpu', 'CPU')} ({device.get('cores', '?')} cores)"
    return str(device)


def draw_train_step(results: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: JI-ADF vs the backbone-only ceiling, one group per result file and setting."""
    groups: list[tuple[str, dict[str, float]]] = []
    for res in results:
        for mode, batch in sorted({(r["mode"], r["batch"]) for r in res["rows"]}):
            speeds = {r["model"]: r["samples_per_s"] for r in res["rows"] if (r["mode"], r["batch"]) == (mode, batch)}
            label = f"{res['backbone']} @ {res['image_size']}px\n{mode}, batch {batch}\n{res['device']}\n{res['date']}"
            groups.append((label, speeds))
    models = sorted({m for _, speeds in groups for m in speeds}, key=lambda m: m != "JI-ADF")
    fig = Figure(figsize=(max(6.0, 2.6 * len(groups) + 1.5), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        values = [speeds.get(model, 0.0) for _, speeds in groups]
        bars = ax.bar(xs, values, width=width * 0.95, label=model)
        ax.bar_label(bars, labels=[f"{v:g}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=7.5)
    ax.set_ylabel("samples/s (median)")
    ax.set_title("Training-step throughput (benchmarks/results/train_step-*.json)", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.margins(y=0.15)
    fig.tight_layout()
    return _write_png(fig, path)


def draw_loading(result: dict[str, Any], path: Path) -> Path:
    """Horizontal bars: loader samples/s per pipeline, with 0 and 2 workers (log scale)."""
    pipelines = list(dict.fromkeys(r["pipeline"] for r in result["results"]))
    workers = sorted({r["num_workers"] for r in result["results"]})
    fig = Figure(figsize=(8.5, 0.55 * len(pipelines) * len(workers) + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(workers)
    for i, n in enumerate(workers):
        values = [
            next((r["median"] for r in result["results"] if r["pipeline"] == p and r["num_workers"] == n), 0.0)
            for p in pipelines
        ]
        ys = [k + (i - (len(workers) - 1) / 2) * height for k in range(len(pipelines))]
        bars = ax.barh(ys, values, height=height * 0.95, label=f"{n} workers")
        ax.bar_label(bars, labels=[f"{v:g}" for v in values], fontsize=8, padding=2)
    ax.set_yticks(range(len(pipelines)), pipelines, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(result["setup"]["unit"] + ", median, log scale")
    ax.set_title(
        f"Loading at {result['setup']['image_size']}px, batch {result['setup']['batch_size']}: "
        f"{_short_device(result['device'])}, {result['date']}",
        fontsize=10,
    )
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.margins(x=0.2)
    fig.tight_layout()
    return _write_png(fig, path)


def benchmark_figures(results_dir: Path, out: Path) -> list[Path]:
    """The throughput figures from the result files in ``results_dir``."""
    step = [json.loads(p.read_text()) for p in sorted(results_dir.glob("train_step-*.json"))]
    if not step:
        raise SystemExit(f"{results_dir}: no train_step-*.json result files")
    written = [draw_train_step(step, out / "train_step.png")]
    # the newest dated loading-<device>-<date>.json (or an undated loading.json of older checkouts)
    loading = sorted(results_dir.glob("loading-*.json"), key=lambda p: p.stem[-10:]) or sorted(
        results_dir.glob("loading.json")
    )
    if loading:
        written.append(draw_loading(json.loads(loading[-1].read_text()), out / "loading.png"))
    return written


def main(argv: list[str] | None = None) -> None:
    """Regenerate the chosen figures (default: all) under docs/assets/."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="which figures to make")
    parser.add_argument(
        "--quickstart-run",
        type=Path,
        default=None,
        help="a finished quick-start run to copy from (default: train one in a temporary folder)",
    )
    parser.add_argument("--assets", type=Path, default=ASSETS, help="where to write (default docs/assets)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="benchmark result files")
    args = parser.parse_args(argv)
    written: list[Path] = []
    if "architecture" in args.only:
        written.append(draw_architecture(architecture_labels(), args.assets / "architecture.png"))
    if "quickstart" in args.only:
        readme = REPO / "README.md" if args.assets == ASSETS else None
        written += quickstart_assets(args.quickstart_run, args.assets / "quickstart", readme)
    if "benchmarks" in args.only:
        written += benchmark_figures(args.results, args.assets / "benchmarks")
    if "demo" in args.only:  # a separate script: it serves `fusionkit demo` and drives Chromium
        from make_demo_screenshot import demo_screenshot

        written.append(demo_screenshot(args.quickstart_run, args.assets / "demo" / "page.png"))
    for path in written:
        print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


if __name__ == "__main__":
    main()
