"""The model card (``README.md``) of a saved pipeline: YAML front matter the Hub reads, then what a
user must know before using the model: its validation metrics, inputs, intended use and limits, and
the population it was trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from fusionkit.metrics.isic import POSITIVE_THRESHOLD
from fusionkit.utils.tables import markdown_row, markdown_table

if TYPE_CHECKING:
    from fusionkit.inference.pipeline import FusionPipeline

DATA_LICENSE_NOTE = (
    "The weights were trained on MILK10k (ISIC archive), whose images and metadata are licensed "
    "CC-BY-NC 4.0: the model is for non-commercial research use."
)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mix(counts: dict[str, int] | None) -> str:
    if not counts:
        return "not recorded"
    total = sum(counts.values()) or 1
    return ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.items())


def front_matter(pipe: FusionPipeline) -> dict[str, Any]:
    """The YAML front matter: library name, tags, licence note, metrics (a ``model-index`` entry)."""
    validation = pipe.provenance.get("validation") or {}
    macro = validation.get("macro") or {}
    results = [
        {"type": key, "name": f"validation macro {name}", "value": round(float(macro[key]), 4)}
        for key, name in (("dice", "Dice"), ("auc", "AUC"))
        if macro.get(key) is not None
    ]
    matter: dict[str, Any] = {
        "library_name": "fusionkit",
        "license": "other",
        "license_name": "cc-by-nc-4.0-data",
        "license_link": "https://creativecommons.org/licenses/by-nc/4.0/",
        "tags": ["fusionkit", "skin-lesion-classification", "dermatology", "multimodal", "milk10k", "model_hub_mixin"],
        "pipeline_tag": "image-classification",
        "metrics": ["dice", "roc_auc"],
    }
    if results:
        matter["model-index"] = [
            {
                "name": pipe.run_config.model.name or "fusionkit-model",
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "skin lesion classification"},
                        "dataset": {"type": "milk10k", "name": "MILK10k (validation split)"},
                        "metrics": results,
                    }
                ],
            }
        ]
    return matter


def model_card(pipe: FusionPipeline) -> str:
    """The whole ``README.md`` of a saved pipeline."""
    prov = pipe.provenance
    validation = prov.get("validation") or {}
    population = prov.get("population") or {}
    decision = pipe.decision
    spec = pipe.run_config.model
    lines = ["---", yaml.safe_dump(front_matter(pipe), sort_keys=False).rstrip(), "---", ""]
    lines += [
        f"# {spec.name or 'fusionkit model'}: multimodal skin-lesion classifier",
        "",
        f"A [fusionkit](https://github.com/fusionkit/fusionkit) {type(pipe.model).__name__} "
        f"(decision `{spec.decision.kind}`, fusion `{spec.fusion.kind if spec.fusion else 'none'}`) that "
        f"classifies a skin lesion into {len(pipe.class_names)} MILK10k diagnoses "
        f"({', '.join(pipe.class_names)}) from its inputs: {', '.join(pipe.modalities)}.",
        "",
        "## How to use",
        "",
        "```python",
        "from fusionkit import FusionPipeline",
        "",
        'pipe = FusionPipeline.from_pretrained("path/or/hub-id")',
        'result = pipe.predict(derm="derm.jpg", clinical="clinical.jpg", metadata={"age_approx": "55", "sex": "male", ...})',
        "result.probs, result.classes, result.weights, result.missing",
        "```",
        "",
        "## Inputs",
        "",
        f"- Photos: {', '.join(m for m in pipe.modalities if m != 'meta') or 'none'}; each resized to "
        f"{pipe.preprocessing.input_size}x{pipe.preprocessing.input_size} (no crop), normalised with mean "
        f"{list(pipe.preprocessing.mean)} and std {list(pipe.preprocessing.std)}. A photo not given is "
        "treated as a missing modality (the result's `missing` says so).",
    ]
    if "meta" in pipe.modalities and pipe.encoder is not None:
        from fusionkit.inference.inputs import feature_groups, required_fields

        lines.append(
            f"- Metadata (MILK10k column names), feature groups {sorted(feature_groups(pipe.encoder))}: "
            f"{', '.join(required_fields(pipe.encoder, ('derm', 'clinical')))} "
            "(blank values allowed; a field not given is refused unless `impute=True`)."
        )
    lines += ["", "## Decision rule", "", f"`{decision.rule}`: the CSV and `result.values` hold {decision.describe()}."]
    if decision.thresholds is not None:
        lines += ["", *markdown_table(["class", "threshold", "fitted", "validation positives"], [])]
        for i, c in enumerate(decision.class_names):
            fitted = decision.fitted[i] if decision.fitted else True
            positives = decision.positives[i] if decision.positives else "?"
            kept = f"no (kept {POSITIVE_THRESHOLD})"
            lines.append(markdown_row([c, f"{decision.thresholds[i]:.4f}", "yes" if fitted else kept, positives]))
        lines += [
            "",
            f"A threshold is fitted only where the validation split has at least {decision.min_positives} positives.",
        ]
    lines += ["", "## Validation metrics", ""]
    if validation:
        lines += [
            f"On the training run's validation split ({validation.get('lesions', '?')} lesions), posteriors:",
            "",
            "| class | positives | Dice | AUC | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
        ]
        for c, m in (validation.get("per_class") or {}).items():
            lines.append(
                f"| {c} | {m.get('positives', '?')} | {_fmt(m.get('dice'))} | {_fmt(m.get('auc'))} | "
                f"{_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} |"
            )
        macro = validation.get("macro") or {}
        lines.append(
            f"| **macro** | | {_fmt(macro.get('dice'))} | {_fmt(macro.get('auc'))} | "
            f"{_fmt(macro.get('sensitivity'))} | {_fmt(macro.get('specificity'))} |"
        )
    else:
        lines.append("Not recorded (the run predates stored validation metrics).")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "- **Research use only. This is not a medical device** and must not be used to diagnose, "
        "treat or triage patients.",
        "- It was trained on one dataset (MILK10k) and its population; performance on other clinics, "
        "cameras, skin tones or body sites is unknown. Classes with few training lesions are unreliable.",
        f"- {DATA_LICENSE_NOTE}",
        "",
        "## Training population",
        "",
    ]
    if population:
        age = population.get("age") or {}
        lines += [
            f"- Lesions: {population.get('lesions', '?')} (training split)",
            f"- Skin tone (skin_tone_class 0-5): {_mix(population.get('skin_tone'))}",
            f"- Site: {_mix(population.get('site'))}",
            f"- Sex: {_mix(population.get('sex'))}",
            f"- Age: {age.get('min', '?')} to {age.get('max', '?')}" if age else "- Age: not recorded",
        ]
    else:
        lines.append("Not recorded.")
    lines += [
        "",
        "## Provenance",
        "",
        f"- fusionkit {prov.get('fusionkit_version', '?')}; source run `{prov.get('source_run', '?')}`, "
        f"checkpoint {prov.get('checkpoint', '?')} (epoch {prov.get('epoch', '?')}).",
        "- The full run config (model spec, training recipe) is in `config.json`.",
        "",
    ]
    return "\n".join(lines)
