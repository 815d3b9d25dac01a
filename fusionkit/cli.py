"""The ``fusionkit`` command line: train, predict, evaluate, and look at what is available.

User errors (a bad config, a folder not in the MILK10k layout, CUDA without a GPU, ...) print one
line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError

from fusionkit.errors import FusionkitError

app = typer.Typer(
    name="fusionkit",
    help="Multimodal fusion models (JI-ADF) for skin-lesion classification on MILK10k.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.echo(f"fusionkit: error: {message}", err=True)
    raise typer.Exit(code=2)


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "spec"
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid {err.title}: " + "; ".join(parts)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Run config (YAML): model, train and data sections.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="MILK10k folder (overrides data.root).")] = None,
    synthetic: Annotated[bool, typer.Option("--synthetic", help="Train on a generated MILK10k-layout set (data.synthetic).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default runs/<config name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: key.path=value (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train a model; leaves checkpoints, logs and the evaluation report in the run directory.

    The paper's recipe is the default; training options are off until set in the
    config's train section or with --set (docs: how-to/training-options):

    \b
    train.ema_decay=0.999          validate and save an EMA of the weights
    train.scheduler.kind=cosine    warmup (scheduler.warmup_epochs), cosine
    train.backbone_lr=1e-5         backbone lr (and backbone_weight_decay)
    train.no_decay_norm_bias=true  no weight decay on norms and biases
    train.mixup.mixup_alpha=0.4    mixup (mixup.cutmix_alpha: cutmix)
    train.init_from=RUN            warm start from matching tensors
    train.tracking=\\[tensorboard]   event files in RUN/tensorboard (or mlflow)
    """
    from fusionkit.evaluate.pipeline import train_and_evaluate
    from fusionkit.train.config import load_run_config

    if data is not None and synthetic:
        _fail("give either --data DIR or --synthetic, not both")
    cfg = load_run_config(config, set_ or [])
    run_dir = out or Path("runs") / config.stem
    trainer = train_and_evaluate(cfg, run_dir=run_dir, data_root=data, synthetic=synthetic, resume=resume, progress=not quiet)
    if trainer.dist.is_main:
        typer.echo(f"run directory: {run_dir}  (best val macro Dice {trainer.best_dice:.4f}; report: {run_dir / 'report.md'})")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run directory written by 'fusionkit train'.")],
    data: Annotated[Path, typer.Option("--data", help="MILK10k folder holding the split to predict.")],
    out: Annotated[Path, typer.Option("--out", help="Submission CSV to write.")] = Path("submission.csv"),
    split: Annotated[str, typer.Option(help="Split to read: Test, Training, or auto (Test when present).")] = "auto",
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
) -> None:
    """Write a submission CSV in the official MILK10k format (lesion_id + 11 class probabilities)."""
    from fusionkit.evaluate.inference import predict_split

    path = predict_split(run, data_root=data, out=out, split=split, checkpoint=checkpoint)
    typer.echo(f"wrote {path}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run directory written by 'fusionkit train'.")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Labelled MILK10k folder (default: the run's validation split).")] = None,
    gradcam: Annotated[int, typer.Option(help="How many lesions get Grad-CAM overlays.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Write the evaluation report (Table 5 metrics, figures, ablation) into the run directory."""
    from fusionkit.evaluate.report import evaluate_run

    path = evaluate_run(run, data_root=data, gradcam_lesions=gradcam, progress=not quiet)
    typer.echo(f"report: {path}")


@app.command()
def presets(
    pattern: Annotated[str, typer.Argument(help="fnmatch pattern.")] = "*",
    show: Annotated[Optional[str], typer.Option(help="Print one preset's full spec as YAML.")] = None,
) -> None:
    """List the shipped model presets (the paper's Table 2, Table 3 and Figure 3 variants)."""
    import fusionkit as fk
    from fusionkit.presets import preset_description

    if show:
        typer.echo(fk.load_preset(show).to_yaml())
        return
    for name in fk.list_presets(pattern):
        typer.echo(f"{name:16s} {preset_description(name)}")


@app.command()
def components(
    kind: Annotated[Optional[str], typer.Argument(help="image_encoder, metadata_encoder, fusion or decision.")] = None,
    pattern: Annotated[str, typer.Option(help="fnmatch pattern.")] = "*",
) -> None:
    """List the registered components (built-in and plugins)."""
    import fusionkit as fk

    listing = {kind: fk.list_components(kind, pattern)} if kind else fk.list_components(pattern=pattern)
    for k, names in listing.items():
        typer.echo(f"{k}: {', '.join(names) if names else '-'}")


@app.command()
def schema(
    out: Annotated[Optional[Path], typer.Option("--out", help="Write to a file instead of stdout.")] = None,
) -> None:
    """Print the JSON schema of the model spec (for editor completion of YAML specs)."""
    import fusionkit as fk
    from fusionkit.utils.io import atomic_write_text

    text = json.dumps(fk.spec_json_schema(), indent=2)
    if out:
        atomic_write_text(out, text + "\n")
        typer.echo(f"wrote {out}")
    else:
        typer.echo(text)


@app.command()
def synthesize(
    root: Annotated[Path, typer.Argument(help="Folder to write the generated MILK10k-layout set into.")],
    n_lesions: Annotated[int, typer.Option(help="Number of lesions.")] = 200,
    width: Annotated[int, typer.Option(help="Image width.")] = 600,
    height: Annotated[int, typer.Option(help="Image height.")] = 450,
    seed: Annotated[int, typer.Option(help="Seed (same seed, byte-identical files).")] = 0,
    test_split: Annotated[bool, typer.Option("--test-split", help="Also write an unlabelled Test split.")] = False,
) -> None:
    """Generate a synthetic MILK10k set in the exact archive layout."""
    from fusionkit.data.synthetic import make_synthetic_milk10k

    if n_lesions < 1 or width < 8 or height < 8:
        _fail("need n_lesions >= 1 and images at least 8x8")
    make_synthetic_milk10k(root, n_lesions=n_lesions, image_size=(width, height), seed=seed)
    if test_split:
        make_synthetic_milk10k(
            root, n_lesions=max(n_lesions // 10, 1), image_size=(width, height), seed=seed + 1,
            split="Test", with_ground_truth=False,
        )
    typer.echo(f"wrote a synthetic MILK10k set of {n_lesions} lesions to {root}")


def main() -> None:
    """Entry point of the ``fusionkit`` script: user errors become one line and exit status 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console shows warnings; train.log has it all
        handler.setLevel(logging.WARNING)
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("fusionkit: interrupted (a resumable checkpoint was saved where training had started)", err=True)
        sys.exit(130)
    except FusionkitError as exc:
        typer.echo(f"fusionkit: error: {exc}", err=True)
        sys.exit(2)
    except ValidationError as exc:
        typer.echo(f"fusionkit: error: {_validation_message(exc)}", err=True)
        sys.exit(2)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
