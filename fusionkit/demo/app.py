"""The demo page: a trained model a clinician can try in the browser (Gradio, the ``demo`` extra).

:func:`build_demo` builds the page for a loaded :class:`~fusionkit.inference.pipeline.FusionPipeline`
as a ``gradio.Blocks`` (mount it in another app, or launch it); :func:`serve` is what
``fusionkit demo`` runs: it loads nothing itself, keeps every upload in one temporary folder that
it deletes on exit, binds 127.0.0.1 unless told otherwise and never opens a share link unless asked.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import signal
import tempfile
import weakref
from pathlib import Path
from typing import Any

from fusionkit.data import make_synthetic_milk10k
from fusionkit.data.schema import CLINICAL, DERMOSCOPIC, MANIPULATIONS, MONET_COLUMNS, SEXES, SITES, SKIN_TONES
from fusionkit.demo.lesion import (
    MAX_UPLOAD_BYTES,
    PHOTO_NAMES,
    RESEARCH_NOTE,
    decision_text,
    form_fields,
    inputs_text,
    metadata_record,
    predict_case,
    probability_table,
    weights_table,
)
from fusionkit.errors import require_extra
from fusionkit.inference.pipeline import FusionPipeline

logger = logging.getLogger("fusionkit.demo")

EXAMPLE_LESIONS = 3
"""How many generated lesions the page offers as one-click examples."""


def example_cases(folder: Path, *, n: int = EXAMPLE_LESIONS, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` generated lesions (:func:`~fusionkit.data.make_synthetic_milk10k`) written into ``folder``:
    each a dict with ``derm`` and ``clinical`` (JPEG paths) and the lesion's ``rows`` of metadata."""
    files = make_synthetic_milk10k(folder, n_lesions=max(n, 1), photo_size=(300, 225), seed=seed, overwrite=True)
    with files.metadata_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    cases = []
    for lesion in sorted({r["lesion_id"] for r in rows})[:n]:
        mine = [r for r in rows if r["lesion_id"] == lesion]
        paths = {r["image_type"]: next(files.image_dir.rglob(f"{r['isic_id']}.jpg")) for r in mine}
        cases.append({"derm": paths[DERMOSCOPIC], "clinical": paths[CLINICAL], "rows": mine})
    return cases


def build_demo(pipe: FusionPipeline, *, examples_dir: str | Path | None = None, title: str | None = None) -> Any:
    """The demo page of ``pipe`` as a ``gradio.Blocks`` (not launched).

    The form offers the photos and metadata fields the model uses (MONET scores only for a model
    trained with them); **Predict** shows every class's probability, the decision rule's class, the
    gate weights (ADF models), Grad-CAM overlays and which inputs were absent or imputed. Bad input
    is a message on the page. ``examples_dir``: where the example lesions are written (default: a
    new temporary folder, deleted at exit); it must stay while the page is served.

    Raises:
        MissingExtraError: Gradio is not installed (``pip install 'jiadf-fusion[demo]'``).
    """
    gr = require_extra("gradio", what="the demo page")
    fields = form_fields(pipe)
    folder = Path(examples_dir) if examples_dir is not None else Path(tempfile.mkdtemp(prefix="fusionkit-examples-"))
    cases = example_cases(folder) if fields.photos else []
    name = title or f"fusionkit demo: {pipe.run_config.model.name or 'trained model'}"

    with gr.Blocks(title=name, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(f"# Try a skin-lesion model\n\n{RESEARCH_NOTE}", elem_id="note")
        with gr.Row():
            with gr.Column():
                photo_inputs = [
                    gr.File(
                        label=f"{PHOTO_NAMES[m]} (JPEG or PNG, at most {MAX_UPLOAD_BYTES // 2**20} MiB; may be left out)",
                        type="filepath",
                        elem_id=m,
                    )
                    for m in fields.photos
                ]
                meta_inputs = _metadata_inputs(gr, fields)
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                decision = gr.Markdown(elem_id="decision")
                probs = gr.Markdown(elem_id="probs")
                weights = gr.Markdown(elem_id="weights")
                notes = gr.Markdown(elem_id="inputs")
                overlays = [
                    gr.Image(label=f"Grad-CAM: {PHOTO_NAMES[m]}", elem_id=f"gradcam-{m}", interactive=False)
                    for m in fields.photos
                ]
        keys = list(meta_inputs)
        inputs = photo_inputs + [meta_inputs[k] for k in keys]
        outputs = [message, decision, probs, weights, notes, *overlays]

        def run(*values: Any) -> list[Any]:
            paths = dict(zip(fields.photos, values[: len(fields.photos)], strict=True))
            form = dict(zip(keys, values[len(fields.photos) :], strict=True))
            try:
                return _predict(pipe, fields, paths, form)
            except Exception:  # a bug must not take the server down or show a traceback on the page
                logger.exception("the demo failed on a request")
                return ["The model could not predict this case (the server log has the details).", *_blank(fields)]

        button.click(run, inputs=inputs, outputs=outputs, api_name="predict", concurrency_limit=1)
        if cases:
            gr.Examples(
                examples=[_example_row(case, fields, keys) for case in cases],
                example_labels=[_example_label(i, case) for i, case in enumerate(cases, start=1)],
                inputs=inputs,
                label="Example cases (generated lesions, not real patients): click one, then Predict",
                cache_examples=False,
                elem_id="examples",
            )
    if examples_dir is None:  # the folder made here is deleted at exit (or with the page)
        weakref.finalize(demo, shutil.rmtree, folder, True)
    return demo


def _metadata_inputs(gr: Any, fields: Any) -> dict[str, Any]:
    groups = fields.metadata
    inputs: dict[str, Any] = {}
    if "age" in groups:
        inputs["age"] = gr.Number(
            label="Age (years; blank: imputed)", value=None, minimum=0, maximum=120, elem_id="age"
        )
    if "sex" in groups:
        inputs["sex"] = gr.Radio(choices=list(SEXES), label="Sex (blank: unknown)", value=None, elem_id="sex")
    if "site" in groups:
        inputs["site"] = gr.Dropdown(
            choices=list(SITES), label="Anatomical site (blank: unknown)", value=None, elem_id="site"
        )
    if "skin_tone" in groups:
        inputs["skin_tone"] = gr.Radio(
            choices=[str(t) for t in SKIN_TONES], label="Skin tone class (blank: unknown)", value=None, elem_id="tone"
        )
    if fields.altered:
        for m in fields.photos:
            inputs[f"{m}.image_manipulation"] = gr.Radio(
                choices=list(MANIPULATIONS), label=f"{PHOTO_NAMES[m]}: image manipulation", value=MANIPULATIONS[0]
            )
    if fields.monet:
        with gr.Accordion("MONET concept scores (0 to 1; blank: imputed from the training mean)", open=False):
            for m in fields.photos:
                for column in MONET_COLUMNS:
                    key = f"{m}.{column}"
                    inputs[key] = gr.Number(label=f"{PHOTO_NAMES[m]}: {column}", value=None, minimum=0, maximum=1)
    return inputs


def _predict(pipe: FusionPipeline, fields: Any, paths: dict[str, Any], form: dict[str, Any]) -> list[Any]:
    given = [m for m in fields.photos if paths.get(m)]
    metadata = metadata_record(
        fields,
        photos=given,
        age=form.get("age"),
        sex=form.get("sex"),
        site=form.get("site"),
        skin_tone=form.get("skin_tone"),
        monet={k: v for k, v in form.items() if ".MONET_" in k},
        altered={m: form.get(f"{m}.image_manipulation") for m in fields.photos},
    )
    result = predict_case(pipe, derm=paths.get("derm"), clinical=paths.get("clinical"), metadata=metadata)
    if result.prediction is None:
        return [f"**Cannot predict:** {result.message}", *_blank(fields)]
    p = result.prediction
    return [
        "",
        decision_text(p),
        probability_table(p),
        weights_table(p),
        inputs_text(p, photos=fields.photos),
        *[result.overlays.get(m) for m in fields.photos],
    ]


def _blank(fields: Any) -> list[Any]:
    return ["", "", "", "", *[None for _ in fields.photos]]


def _example_label(number: int, case: dict[str, Any]) -> str:
    first = case["rows"][0]
    about = ", ".join(
        v for v in (first["age_approx"] and f"age {first['age_approx']}", first["sex"], first["site"]) if v
    )
    return f"Generated lesion {number}" + (f" ({about})" if about else "")


def _example_row(case: dict[str, Any], fields: Any, keys: list[str]) -> list[Any]:
    rows = {("derm" if r["image_type"] == DERMOSCOPIC else "clinical"): r for r in case["rows"]}
    first = case["rows"][0]
    values: dict[str, Any] = {
        "age": float(first["age_approx"]) if first["age_approx"] else None,
        "sex": first["sex"] or None,
        "site": first["site"] or None,
        "skin_tone": first["skin_tone_class"] or None,
    }
    for m, row in rows.items():
        values[f"{m}.image_manipulation"] = row["image_manipulation"]
        for column in MONET_COLUMNS:
            values[f"{m}.{column}"] = float(row[column]) if row[column] else None
    return [str(case[m]) for m in fields.photos] + [values.get(k) for k in keys]


def serve(
    pipe: FusionPipeline,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
) -> None:
    """Serve the demo page of ``pipe`` until interrupted (what ``fusionkit demo`` runs).

    Uploads and the example lesions live in one temporary folder (Gradio's upload folder,
    ``GRADIO_TEMP_DIR``), deleted when the server stops; uploads over :data:`MAX_UPLOAD_BYTES` are
    refused by the server. ``share`` opens a public Gradio link: off unless asked.
    """
    work = Path(tempfile.mkdtemp(prefix="fusionkit-demo-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    handler = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops the server as Ctrl-C does: the folder goes
    os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        demo = build_demo(pipe, examples_dir=work / "examples")
        demo.queue(default_concurrency_limit=1)
        demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            inbrowser=False,
            show_error=False,
            max_file_size=MAX_UPLOAD_BYTES,
            allowed_paths=[str(work / "examples")],
            quiet=False,
        )
    finally:
        signal.signal(signal.SIGTERM, handler)
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


__all__ = ["EXAMPLE_LESIONS", "build_demo", "example_cases", "serve"]
