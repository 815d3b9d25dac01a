"""The ``fusionkit`` command line: train, predict, evaluate, export, and look at what is available.

User errors (a bad config, a folder not in the MILK10k layout, CUDA without a GPU, ...) print one
line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from fusionkit.errors import ConfigError, FusionkitError, require_extra

_PATH_ERRORS = (IsADirectoryError, NotADirectoryError, PermissionError, FileNotFoundError, FileExistsError)
"""File-system errors about a path the user named: user errors (exit status 2)."""


def _error_status(exc: BaseException) -> int:
    """Print the one line for a command's error or interrupt on stderr; returns its exit status."""
    from fusionkit.errors import RunInterrupted

    if isinstance(exc, _SweepInterrupted):
        name = "SIGTERM" if exc.exit_code == 143 else "interrupt"
        typer.echo(
            f"fusionkit: {name}: sweep stopped; run the same command again to continue "
            "(finished runs are skipped, an interrupted run resumes from its last checkpoint)",
            err=True,
        )
        return exc.exit_code
    if isinstance(exc, _Terminated):
        typer.echo(
            "fusionkit: SIGTERM: stopped outside training (no partial files left); run the command again "
            "(with --resume where a run directory already holds a run)",
            err=True,
        )
        return 143
    if isinstance(exc, RunInterrupted):
        name = "SIGTERM" if exc.exit_code == 143 else "interrupt"
        where = f" in {exc.run_dir}" if exc.run_dir is not None else ""
        typer.echo(
            f"fusionkit: {name}: stopped; a resumable checkpoint was saved{where} (continue with --resume)",
            err=True,
        )
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt | typer.Abort):  # Abort: Ctrl-C in a prompt
        typer.echo("fusionkit: interrupted", err=True)
        return 130
    if isinstance(exc, FusionkitError):
        typer.echo(f"fusionkit: error: {exc}", err=True)
        return exc.exit_code
    if isinstance(exc, ValidationError):
        typer.echo(f"fusionkit: error: {_validation_message(exc)}", err=True)
        return 2
    assert isinstance(exc, OSError)  # the file system said no: a path the user named (2), or full, broken (1)
    where = f"{exc.filename}: " if exc.filename else ""
    typer.echo(f"fusionkit: error: {where}{exc.strerror or exc}", err=True)
    return 2 if isinstance(exc, _PATH_ERRORS) else 1


_CLICK_ERROR: type[Any] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""The base of click's usage errors as typer raises them (typer vendors click; its module is private)."""


class _Commands(TyperGroup):
    """The command group (typer's ``cls=`` extension point): a command's error becomes one line.

    typer turns an interrupt into a bare exit status 130 and leaves every other exception a
    traceback; around each command (and the group's own callback), :func:`_error_status` prints the
    line and the command exits with its status instead. A broken pipe is left to typer (status 1).
    ``fusionkit`` alone prints the help and exits 0 (click >= 8.2 would make it a usage error).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's click Context (private module)
        """Parse the group's arguments; ``fusionkit`` alone prints the help and exits 0."""
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help())
            raise typer.Exit(0)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        """Invoke the command ``ctx`` names; its errors and interrupts as one line and an exit status."""
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, typer.Abort, FusionkitError, ValidationError, OSError) as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            raise typer.Exit(_error_status(exc)) from exc


app = typer.Typer(
    cls=_Commands,
    name="fusionkit",
    help="Multimodal fusion models (JI-ADF) for skin-lesion classification on MILK10k.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: boolean options show as flags, not "<bool>"
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # every command inherits -h
)


# options several commands share, written once
DataOption = Annotated[Path | None, typer.Option("--data", help="MILK10k folder (overrides data.root).")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ClusterOption = Annotated[str | None, typer.Option(help="submitit cluster: slurm, local, or auto-detect (default).")]
PartitionOption = Annotated[str | None, typer.Option(help="SLURM partition (submitit).")]
GpusPerJobOption = Annotated[int, typer.Option(help="GPUs per SLURM job (submitit).")]


def _print_version(value: bool) -> None:
    if value:
        from fusionkit import __version__

        typer.echo(f"fusionkit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    """Multimodal fusion models (JI-ADF) for skin-lesion classification on MILK10k."""


def _fail(message: str) -> None:
    typer.echo(f"fusionkit: error: {message}", err=True)
    raise typer.Exit(code=2)


def _with_split_file(sets: list[str] | None, split_file: Path | None) -> list[str]:
    """``--set`` overrides plus ``data.split_file`` (absolute, so every run and worker finds it)."""
    if split_file is None:
        return list(sets or [])
    if not split_file.is_file():
        _fail(f"--split-file {split_file}: no such file")
    return [*(sets or []), f"data.split_file={split_file.resolve()}"]


def _validation_message(err: ValidationError) -> str:
    from fusionkit.specs.io import validation_message

    return validation_message(err)


@app.command()
def train(
    config: Annotated[
        Path, typer.Argument(metavar="CONFIG", help="Run config (YAML): model, train and data sections.")
    ],
    data: DataOption = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Train on a generated MILK10k-layout set (data.synthetic).")
    ] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<config name>).")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue the run in --out from its last checkpoint (from the beginning if it has none)."
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete the run in --out and start it over.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a config value: key.path=value (repeatable)."),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds",
            metavar="K",
            help="Train K runs, one per lesion-level stratified fold, into --out/runs/<name>/seed<s>/fold<j> (run again to resume); predict with the fold ensemble: fusionkit predict OUT.",
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(
            "--split-file",
            help='Use these lesions instead of drawing a split: JSON {"train": [ids], "val": [ids]} (a run\'s split.json) or {"folds": [...]} with --folds (sets data.split_file).',
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Train a model; leaves checkpoints, logs and the evaluation report in the run directory.

    The paper's recipe is the default; training options are off until set in the
    config's train section or with --set (docs: how-to/training-options, how-to/fine-tuning-recipes):

    \b
    train.ema_decay=0.999          validate and save an EMA of the weights
    train.scheduler.kind=cosine    warmup (scheduler.warmup_epochs), cosine
    train.backbone_lr=1e-5         backbone lr (and backbone_weight_decay)
    train.no_decay_norm_bias=true  no weight decay on norms and biases
    train.layer_decay=0.75         layer-wise lr decay of the backbones
    train.freeze_backbone_epochs=2 backbones frozen first (linear_probe: always)
    train.grad_checkpointing=true  recompute backbone activations (memory)
    train.mixup.mixup_alpha=0.4    mixup (mixup.cutmix_alpha: cutmix)
    train.init_from=RUN            warm start from matching tensors
    train.tracking=[tensorboard]   event files in RUN/tensorboard (or mlflow)
    """
    from fusionkit.evaluate.pipeline import train_and_evaluate
    from fusionkit.runtime.config import load_run_config

    if data is not None and synthetic:
        _fail("give either --data DIR or --synthetic, not both")
    set_ = _with_split_file(set_, split_file)
    cfg = load_run_config(config, set_)
    run_dir = out or Path("runs") / config.stem
    if folds is not None:
        if resume or overwrite:
            _fail(
                "--folds runs resume by running the same command again (finished folds are skipped); "
                "to start over, delete --out first"
            )
        from fusionkit.sweep import plan_sweep

        jobs = plan_sweep(
            config,
            presets=None,
            seeds=(cfg.train.seed,),
            folds=folds,
            out=run_dir,
            data_root=data or Path("."),
            sets=set_ or [],
        )
        _run_sweep_jobs(
            jobs,
            out=run_dir,
            data=data,
            synthetic=synthetic,
            reference=jobs[0].preset,
            engine_kind="local",
            quiet=quiet,
        )
        typer.echo(f"fold ensemble: fusionkit predict {run_dir} --data DIR")
        return
    trainer = train_and_evaluate(
        cfg,
        run_dir=run_dir,
        data_root=data,
        synthetic=synthetic,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    if trainer.dist.is_main:
        metric = {"dice": "macro Dice", "f1": "macro F1", "auc": "macro AUC"}[cfg.train.selection_metric]
        typer.echo(
            f"run directory: {run_dir}  (best val {metric} {trainer.best_score:.4f}; report: {run_dir / 'report.md'})"
        )


TTA_HELP = "Test-time augmentation: none, flips (4 views) or d4 (8 dihedral views) of both images; the posterior is their mean."


@app.command()
def predict(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="Run directories or saved pipeline folders (several: an ensemble averaging their posteriors), or a sweep/k-fold folder (its runs/**/).",
        ),
    ],
    data: Annotated[Path, typer.Option("--data", help="MILK10k folder holding the split to predict.")],
    out: Annotated[
        Path, typer.Option("--out", help="Submission CSV to write (its settings go to the same name with .json).")
    ] = Path("submission.csv"),
    split: Annotated[str, typer.Option(help="Split to read: Test, Training, or auto (the Test split).")] = "auto",
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
    tta: Annotated[str, typer.Option("--tta", help=TTA_HELP)] = "none",
    decision: Annotated[
        str,
        typer.Option(
            "--rule",
            "--decision",
            help="The decision rule (--decision is its older name), what the CSV holds: probs (posteriors, rows sum to 1), argmax (one-hot top class) or thresholds (decision scores: each class rescaled so that > 0.5 means its threshold, fitted on the validation split at the end of training, is passed; rows need not sum to 1).",
        ),
    ] = "thresholds",
    refit_thresholds: Annotated[
        bool,
        typer.Option(
            "--refit-thresholds",
            help="Fit the thresholds again on the runs' validation split (reads the training folder) instead of using those stored at the end of training.",
        ),
    ] = False,
    conformal: Annotated[
        float | None,
        typer.Option(
            "--conformal",
            metavar="ALPHA",
            help="Also write split-conformal prediction sets at miscoverage ALPHA (e.g. 0.1: sets hold the truth 90% of the time) to OUT.sets.csv (lesion_id,prediction_set), calibrated on the runs' validation split; the submission CSV is unchanged.",
        ),
    ] = None,
    conformal_method: Annotated[
        str, typer.Option("--conformal-method", help="Conformal score: lac (smallest sets) or aps (adaptive).")
    ] = "lac",
    class_conditional: Annotated[
        bool,
        typer.Option(
            "--class-conditional",
            help="One conformal threshold per class (coverage guaranteed per class, rare ones too).",
        ),
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Write a submission CSV in the official MILK10k format (lesion_id + 11 class values)."""
    import json

    from fusionkit.inference.ensemble import predict_split

    path = predict_split(
        runs,
        data_root=data,
        out=out,
        split=split,
        checkpoint=checkpoint,
        tta=tta,
        decision=decision,
        refit_thresholds=refit_thresholds,
        progress=not quiet,
        conformal=conformal,
        conformal_method=conformal_method,
        class_conditional=class_conditional,
    )
    record = json.loads(path.with_suffix(".json").read_text())
    typer.echo(f"wrote {path} ({record['lesions']} lesions): {record['values']}")
    if "conformal" in record:
        sets = record["conformal"]
        typer.echo(
            f"wrote {sets['sets']}: {sets['method']} prediction sets at alpha {sets['alpha']:g} "
            f"(calibrated on the {sets['calibrated_on']})"
        )


@app.command()
def evaluate(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN",
            help="A run directory written by 'fusionkit train'; several (or a sweep folder): an ensemble, evaluated on the validation split they share.",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Labelled MILK10k folder (default: the run's held-out test part, or its validation split without one).",
        ),
    ] = None,
    gradcam: Annotated[int, typer.Option(help="How many lesions get Grad-CAM overlays.")] = 4,
    tta: Annotated[
        str, typer.Option("--tta", help=TTA_HELP + " The report shows the metrics with and without it.")
    ] = "none",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for an ensemble's report (required for several runs).")
    ] = None,
    allow_training_lesions: Annotated[
        bool,
        typer.Option(
            "--allow-training-lesions",
            help="Evaluate a --data folder holding lesions the run trained on: a report labelled in-sample, "
            "written to --out or RUN/in-sample/, never over the run's own.",
        ),
    ] = False,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="Also score the model under seeded corruptions of one modality at a time on its validation split: robustness.json/.md/.png in the run (or --out).",
        ),
    ] = False,
    severities: Annotated[
        str, typer.Option("--severities", help="With --robustness: comma-separated severities in 1..5.")
    ] = "1,2,3,4,5",
    corruptions: Annotated[
        str | None,
        typer.Option(
            "--corruptions",
            help="With --robustness: comma-separated corruption names (default all; e.g. gaussian_blur,hair,wrong_site,absent).",
        ),
    ] = None,
    baseline_run: Annotated[
        Path | None,
        typer.Option(
            "--baseline-run",
            help="With --robustness: a run holding robustness.json (same seed, same lesions); adds the mean corruption error (mCE) against it.",
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Write the evaluation report (Table 5 metrics, TTA and decision rules, figures, ablation) into the run directory."""
    from fusionkit.evaluate.ensemble_report import evaluate_ensemble
    from fusionkit.evaluate.report import evaluate_run
    from fusionkit.inference.ensemble import find_runs

    found = find_runs(runs)
    if robustness:
        from fusionkit.evaluate.robustness import evaluate_robustness, parse_corruptions, parse_severities

        if len(found) != 1:
            raise ConfigError(f"--robustness scores one run, got {len(found)}; evaluate each run on its own")
        written = evaluate_robustness(
            found[0],
            out=out,
            baseline_run=baseline_run,
            corruptions=parse_corruptions(corruptions),
            severities=parse_severities(severities),
            progress=not quiet,
        )
        typer.echo(f"robustness: {written['json']}")
    elif baseline_run is not None or corruptions is not None:
        raise ConfigError("--baseline-run and --corruptions go with --robustness")
    if len(found) == 1 and (out is None or allow_training_lesions):
        path = evaluate_run(
            found[0],
            data_root=data,
            gradcam_lesions=gradcam,
            progress=not quiet,
            tta=tta,
            out=out,
            allow_training_lesions=allow_training_lesions,
        )
    elif out is None:
        raise ConfigError(f"evaluating an ensemble of {len(found)} runs: pass --out DIR for its report")
    else:
        path = evaluate_ensemble(
            found,
            out=out,
            data_root=data,
            tta=tta,
            progress=not quiet,
            allow_training_lesions=allow_training_lesions,
        )
    typer.echo(f"report: {path}")


@app.command()
def export(
    run: Annotated[
        Path,
        typer.Argument(
            metavar="RUN",
            help="A run directory written by 'fusionkit train', or a folder saved by FusionPipeline.save.",
        ),
    ],
    format_: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    out: Annotated[
        Path, typer.Option("--out", help="File to write; the preprocessing and metadata encoder go beside it as .json.")
    ] = Path("model.onnx"),
    checkpoint: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
) -> None:
    """Export a run for deployment: ONNX with inputs derm, clinical, meta (+ presence masks), dynamic batch."""
    require_extra("onnx", what="ONNX export")
    from fusionkit.inference.ensemble import load_runs
    from fusionkit.inference.export import EXPORT_FORMATS

    if format_ not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format_!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    pipes = load_runs([run], checkpoint=checkpoint, device="cpu")  # a run directory or a saved pipeline folder
    if len(pipes) != 1:
        raise ConfigError(f"{run} holds {len(pipes)} runs; export one run directory or saved pipeline")
    path = pipes[0].export_onnx(out)
    typer.echo(f"wrote {path} and {path.with_suffix('.json')}")


@app.command()
def demo(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="A run directory written by 'fusionkit train', or a folder saved by FusionPipeline.save.",
        ),
    ],
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0: every interface; only on a trusted network).")
    ] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: Gradio's, 7860, or the next free one).")
    ] = None,
    share: Annotated[
        bool, typer.Option("--share", help="Also open a public gradio.live link (off by default).")
    ] = False,
    checkpoint: Annotated[str, typer.Option(help="Checkpoint of a run directory: best or last.")] = "best",
) -> None:
    """Serve a page where a model can be tried in the browser: photos and patient record in, probabilities, gate weights and Grad-CAM out (needs the demo extra)."""
    require_extra("gradio", what="fusionkit demo")
    from fusionkit.demo import serve
    from fusionkit.inference.ensemble import load_runs

    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected a port number in 1..65535")
    pipes = load_runs([model], checkpoint=checkpoint)  # loaded once per process
    if len(pipes) != 1:
        raise ConfigError(f"{model} holds {len(pipes)} runs; the demo serves one run directory or saved pipeline")
    serve(pipes[0], host=host, port=port, share=share)


@app.command()
def init(
    path: Annotated[
        Path,
        typer.Argument(metavar="PATH", help="File to write (a folder: PATH/quickstart.yaml)."),
    ] = Path("quickstart.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite PATH if it exists.")] = False,
) -> None:
    """Write a starter run config (the quick-start run): then fusionkit train quickstart.yaml --synthetic."""
    from importlib import resources

    from fusionkit.utils.io import atomic_write_text

    if path.is_dir():
        path = path / "quickstart.yaml"
    if path.exists() and not force:
        _fail(f"{path} exists; pass --force to overwrite it")
    text = resources.files("fusionkit").joinpath("templates", "quickstart.yaml").read_text()
    atomic_write_text(path, text)
    typer.echo(f"wrote {path}; next: fusionkit train {path} --synthetic --out runs/{path.stem}")


@app.command()
def presets(
    pattern: Annotated[str, typer.Argument(metavar="PATTERN", help="fnmatch pattern.")] = "*",
    show: Annotated[str | None, typer.Option(help="Print one preset's full spec as YAML.")] = None,
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
    kind: Annotated[
        str | None, typer.Argument(metavar="KIND", help="image_encoder, metadata_encoder, fusion or decision.")
    ] = None,
    pattern: Annotated[str, typer.Option(help="fnmatch pattern.")] = "*",
) -> None:
    """List the registered components (built-in and plugins)."""
    import fusionkit as fk

    found = {kind: fk.list_components(kind, pattern)} if kind else fk.list_components(pattern=pattern)
    listing = cast(dict[str, list[str]], found)  # one kind: its names; all kinds: names per kind
    for k, names in listing.items():
        typer.echo(f"{k}: {', '.join(names) if names else '-'}")


@app.command()
def schema(
    out: Annotated[Path | None, typer.Option("--out", help="Write to a file instead of stdout.")] = None,
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
    root: Annotated[Path, typer.Argument(metavar="DIR", help="Folder to write the generated MILK10k-layout set into.")],
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
    make_synthetic_milk10k(root, n_lesions=n_lesions, photo_size=(width, height), seed=seed)
    if test_split:
        make_synthetic_milk10k(
            root,
            n_lesions=max(n_lesions // 10, 1),
            photo_size=(width, height),
            seed=seed + 1,
            split="Test",
            with_ground_truth=False,
        )
    typer.echo(f"wrote a synthetic MILK10k set of {n_lesions} lesions to {root}")


@app.command()
def sweep(
    config: Annotated[
        Path | None,
        typer.Argument(
            metavar="CONFIG", help="Run config (YAML) whose model section names a preset; each run swaps in its own."
        ),
    ] = None,
    group: Annotated[str | None, typer.Option(help="Variants: table2, table3, figure3 or all (default all).")] = None,
    presets: Annotated[
        str | None, typer.Option(help="Variants as comma-separated presets (instead of --group).")
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each seed's variants share split and data order.")
    ] = "0,1,2",
    folds: Annotated[int | None, typer.Option(help="Lesion-level stratified k-fold cross-validation (k >= 2).")] = None,
    data: DataOption = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="One generated MILK10k-layout set (data.synthetic) shared by every run.")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Sweep folder: runs/<preset>/seed<k>[/fold<j>], summary.*, figure3.png.")
    ] = Path("runs/sweep"),
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="key.path=value for every run, or PRESET:key.path=value for one variant (repeatable).",
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            help="Variant the others are compared against (paired intervals and tests; default ji-adf when it runs, else the first)."
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Run one subprocess per device at a time, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES); 'cpu' entries hide the GPUs."
        ),
    ] = None,
    launcher: Annotated[
        str, typer.Option(help="local (this machine) or submitit (SLURM jobs; pip install 'jiadf-fusion[cluster]').")
    ] = "local",
    cluster: ClusterOption = None,
    partition: PartitionOption = None,
    time_min: Annotated[int, typer.Option(help="SLURM time limit per run, minutes (submitit).")] = 240,
    gpus_per_job: GpusPerJobOption = 1,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap replicates of the intervals (runs and lesions resampled).")
    ] = 1000,
    report_only: Annotated[
        Path | None,
        typer.Option(
            "--report-only", help="Rebuild the summary of the sweep in this folder from its runs; run nothing."
        ),
    ] = None,
    split_file: Annotated[
        Path | None,
        typer.Option(
            "--split-file",
            help='Use these lesions instead of drawing a split: JSON {"train": [ids], "val": [ids]} (a run\'s split.json) or {"folds": [...]} with --folds (sets data.split_file).',
        ),
    ] = None,
    robustness: Annotated[
        bool,
        typer.Option(
            "--robustness",
            help="After training, score every run's robustness (evaluate --robustness, mCE against the reference run of the same seed); the summary gets a robustness table.",
        ),
    ] = False,
    severities: Annotated[
        str, typer.Option("--severities", help="With --robustness: comma-separated severities in 1..5.")
    ] = "1,2,3,4,5",
    corruptions: Annotated[
        str | None, typer.Option("--corruptions", help="With --robustness: comma-separated corruption names.")
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Run the paper's ablations (Tables 2-3, Figure 3) over seeds and summarise them with statistics."""
    from fusionkit.errors import ConfigError
    from fusionkit.sweep import parse_seeds, plan_sweep, resolve_reference, select_presets, write_summary

    if bootstrap < 1:
        raise ConfigError("--bootstrap must be at least 1")
    scoring: dict[str, Any] | None = None
    if robustness:
        from fusionkit.evaluate.robustness import parse_corruptions, parse_severities

        scoring = {"corruptions": parse_corruptions(corruptions), "severities": parse_severities(severities)}
    elif corruptions is not None:
        raise ConfigError("--corruptions goes with --robustness")
    if report_only is not None:
        plan_file = report_only / "sweep.json"
        if not plan_file.is_file():
            raise ConfigError(f"{report_only}: not a sweep folder (no sweep.json)")
        ref = reference or json.loads(plan_file.read_text())["reference"]
        if scoring is not None:
            from fusionkit.sweep.robustness import score_sweep_robustness
            from fusionkit.sweep.summary import collect_records

            echo = None if quiet else (lambda line: typer.echo(line, err=True))
            score_sweep_robustness(collect_records(report_only), reference=ref, echo=echo, **scoring)
        summary = write_summary(report_only, reference=ref, n_boot=bootstrap)
        typer.echo(f"summary: {report_only / 'summary.md'} ({len(summary['runs'])} runs)")
        return
    if config is None:
        raise ConfigError("give a CONFIG (or --report-only OUT)")
    if data is not None and synthetic:
        raise ConfigError("give either --data DIR or --synthetic, not both")
    if launcher not in ("local", "submitit"):
        raise ConfigError(f"--launcher {launcher!r}: expected local or submitit")
    set_ = _with_split_file(set_, split_file)
    chosen = select_presets(group=group, presets=presets)
    reference = resolve_reference(chosen, reference)
    jobs = plan_sweep(
        config,
        presets=chosen,
        seeds=parse_seeds(seeds),
        folds=folds,
        out=out,
        data_root=data or Path("."),
        sets=set_ or [],
    )
    if launcher == "submitit":
        engine_kind: dict[str, Any] | str = dict(
            folder=out / "submitit",
            cluster=cluster,
            partition=partition,
            timeout_min=time_min,
            gpus_per_job=gpus_per_job,
        )
    else:
        engine_kind = devices or "local"
    _run_sweep_jobs(
        jobs,
        out=out,
        data=data,
        synthetic=synthetic,
        reference=reference,
        engine_kind=engine_kind,
        quiet=quiet,
        bootstrap=bootstrap,
        robustness=scoring,
    )


def _run_sweep_jobs(
    jobs,
    *,
    out: Path,
    data: Path | None,
    synthetic: bool,
    reference: str,
    engine_kind: str | dict,
    quiet: bool,
    bootstrap: int = 1000,
    robustness: dict[str, Any] | None = None,
) -> None:
    """Run planned sweep jobs (``sweep`` and ``train --folds``): shared data, an engine, the summary.

    ``robustness``: the corruptions and severities of ``sweep --robustness``; every finished run is
    then scored on them here, after training, and the summary rebuilt with its robustness table.

    ``engine_kind``: ``"local"`` (this process), a comma-separated device list (a subprocess queue),
    or the submitit options as a mapping. Exits 1 after the summary when a run failed.
    """
    from fusionkit.sweep import bind_data_root, device_queue, in_process, prepare_data_root, run_sweep, submitit_engine
    from fusionkit.sweep.runner import sweep_lock

    progress = not quiet and sys.stderr.isatty()
    if isinstance(engine_kind, dict):  # the engine first: a missing extra fails before any data is made
        engine = submitit_engine(**engine_kind)
    elif engine_kind != "local":
        engine = device_queue([d.strip() for d in engine_kind.split(",") if d.strip()], log_dir=out / "logs")
    else:
        engine = in_process(progress=progress)
    with sweep_lock(out):  # a second sweep on this folder is refused in one line
        try:
            root = prepare_data_root(jobs, out=out, data_root=data, synthetic=synthetic)
            jobs = bind_data_root(jobs, root)
            summary = run_sweep(
                jobs,
                out=out,
                data_root=root,
                reference=reference,
                engine=engine,
                n_boot=bootstrap,
                echo=lambda line: typer.echo(line, err=True),
            )
        except KeyboardInterrupt as exc:  # a sweep has no --resume: the same command continues it
            raise _SweepInterrupted(getattr(exc, "exit_code", 143 if isinstance(exc, _Terminated) else 130)) from exc
    if robustness is not None:
        from fusionkit.sweep import write_summary
        from fusionkit.sweep.robustness import score_sweep_robustness

        echo = None if quiet else (lambda line: typer.echo(line, err=True))
        score_sweep_robustness(summary["runs"], reference=reference, echo=echo, **robustness)
        summary = write_summary(out, reference=reference, n_boot=bootstrap)
    failed = [r for r in summary["runs"] if r["status"] != "ok"]
    typer.echo(f"summary: {out / 'summary.md'} ({len(summary['runs'])} runs, {len(failed)} failed)")
    if failed:
        for r in failed:
            typer.echo(
                f"failed: {r['preset']} seed {r['seed']}"
                + ("" if r["fold"] is None else f" fold {r['fold']}")
                + f": {r.get('reason')}",
                err=True,
            )
        raise SystemExit(1)  # runs failed: not a user error (2), and not hidden by standalone_mode


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML) every trial starts from.")],
    param: Annotated[
        list[str],
        typer.Option(
            "--param",
            metavar="KEY=KIND:ARGS",
            help="A searched config value (repeatable): KEY=log:LOW:HIGH, float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP] or cat:A,B,...",
        ),
    ],
    trials: Annotated[int, typer.Option("--trials", help="Trials to finish (complete, pruned or failed).")] = 20,
    out: Annotated[
        Path,
        typer.Option("--out", help="Search folder: study.db, trials/trial-<k>/, trials.csv, summary.md, best.yaml."),
    ] = Path("runs/tune"),
    data: DataOption = None,
    synthetic: Annotated[
        bool,
        typer.Option("--synthetic", help="One generated MILK10k-layout set (data.synthetic) shared by every trial."),
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Override a config value for every trial (repeatable)."),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="Validation score to maximise: dice or auc (default: the config's train.selection_metric)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    prune_startup: Annotated[
        int, typer.Option(help="Complete trials before the median pruner stops any (Optuna's n_startup_trials).")
    ] = 5,
    prune_warmup: Annotated[
        int, typer.Option(help="Epochs every trial trains before it can be pruned (0: from its first epoch).")
    ] = 0,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Train every trial to the end.")] = False,
    enqueue: Annotated[
        list[str] | None,
        typer.Option(
            "--enqueue",
            metavar="KEY=VALUE,...",
            help="Values to try first, in order (repeatable), e.g. the config's own; keys left out are sampled.",
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            help="Run one trial per device at a time, e.g. 0,1,2,3 (CUDA_VISIBLE_DEVICES); 'cpu' hides the GPUs."
        ),
    ] = None,
    launcher: Annotated[
        str, typer.Option(help="local (worker processes on this machine) or submitit (SLURM jobs; the cluster extra).")
    ] = "local",
    cluster: ClusterOption = None,
    partition: PartitionOption = None,
    timeout_min: Annotated[int, typer.Option(help="SLURM time limit per trial, minutes (submitit).")] = 240,
    gpus_per_job: GpusPerJobOption = 1,
    parallel: Annotated[int, typer.Option(help="Trials running at once (submitit).")] = 1,
) -> None:
    """Search config values with Optuna (TPE, median pruning); run again to resume; writes best.yaml.

    \b
    fusionkit tune quickstart.yaml --synthetic --trials 20 \\
      --param train.lr=log:1e-5:1e-3 --param train.weight_decay=float:0:0.1 \\
      --param model.fusion.attention_heads=int:4:8 --param train.sampler=cat:shuffle,balanced
    """
    from fusionkit.runtime.config import load_run_config
    from fusionkit.sweep.params import parse_enqueued, parse_params
    from fusionkit.sweep.tune import LocalLauncher, SubmititLauncher, Tuner, TuneSettings

    specs = parse_params(param)
    queued = tuple(parse_enqueued(text, specs) for text in enqueue or [])
    if data is not None and synthetic:
        _fail("give either --data DIR or --synthetic, not both")
    if launcher not in ("local", "submitit"):
        _fail(f"--launcher {launcher!r}: expected local or submitit")
    if parallel < 1:
        _fail("--parallel must be at least 1")
    require_extra("optuna", what="fusionkit tune")
    base = load_run_config(config, set_)
    chosen = metric or base.train.selection_metric
    settings = TuneSettings(
        trials=trials,
        metric=chosen,
        seed=seed,
        prune_startup=prune_startup,
        prune_warmup=prune_warmup,
        prune=not no_prune,
        enqueue=queued,
    )
    runner: LocalLauncher | SubmititLauncher
    if launcher == "submitit":
        runner = SubmititLauncher(
            folder=out / "submitit",
            cluster=cluster,
            partition=partition,
            timeout_min=timeout_min,
            gpus_per_job=gpus_per_job,
            parallel=parallel,
        )
    else:
        listed = [d.strip() for d in devices.split(",") if d.strip()] if devices else None
        runner = LocalLauncher(log_dir=out / "logs", devices=listed)
    tuner = Tuner(
        config,
        params=specs,
        settings=settings,
        out=out,
        data_root=data,
        synthetic=synthetic,
        sets=set_,
        launcher=runner,
        echo=lambda line: typer.echo(line, err=True),
    )
    summary = tuner.run()
    best = summary["best"]
    typer.echo(
        f"summary: {out / 'summary.md'} ({len(summary['trials'])} trials)"
        + ("" if best is None else f"; best: trial {best['trial']} ({best['score']:.4f}), config {out / 'best.yaml'}")
    )
    if best is None:
        raise SystemExit(1)  # no trial completed: not a user error (2)


def run_app(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default ``sys.argv[1:]``); returns the exit status.

    Every command gets the same treatment (:class:`_Commands` and :func:`_error_status`): a
    :class:`~fusionkit.errors.FusionkitError` or a pydantic ``ValidationError`` prints one line and
    returns its ``exit_code`` (2); a usage error prints the usage line and returns 2; ``fusionkit``
    alone prints the help and returns 0; an interrupt returns 130 (SIGINT) or 143 (SIGTERM during
    training); an ``OSError`` prints one line and returns 2 when it is about a path the user named
    (a directory for a file, no permission), else 1. Anything else is a bug and keeps its traceback.
    """
    try:
        result = app(args=args, prog_name="fusionkit", standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort) as exc:  # outside a command (typer makes Ctrl-C a bare 130)
        return _error_status(exc)
    except _CLICK_ERROR as exc:  # usage errors: unknown command or option, bad value, missing argument
        exc.show()
        return exc.exit_code
    # with standalone_mode=False, click returns Exit(code) as code
    return result if isinstance(result, int) else 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (setup, image cache, report, prediction): unwinds like Ctrl-C,
    so atomic writes leave no partial file and a failed start removes what it made."""


class _SweepInterrupted(KeyboardInterrupt):
    """A sweep (or ``train --folds``) stopped by SIGINT or SIGTERM: continued by the same command."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main() -> None:
    """Entry point of the ``fusionkit`` script: :func:`run_app`, its status as the exit status.

    SIGTERM anywhere stops the command with one line and exit status 143 (training installs its own
    handler, which first saves a resumable checkpoint)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the console shows warnings; train.log has it all
        handler.setLevel(logging.WARNING)
    logging.getLogger("fusionkit").setLevel(logging.INFO)  # the command configures logging; the library never does
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Pillow warns about an image over MAX_IMAGE_PIXELS before fusionkit refuses it in one line
    # (fusionkit.data.images): the warning would be a second, redundant line on stderr
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    sys.exit(run_app())


if __name__ == "__main__":
    main()
