"""``FusionPipeline``: a trained model as one object that carries everything predicting needs.

It holds the model (eval mode), the fitted metadata encoder, the image preprocessing, the class
names, the decision rule with its thresholds (fitted once at the end of training on the validation
split, :mod:`fusionkit.inference.decision`) and provenance (spec, validation metrics, fusionkit
version, the run it came from). Load it from a run directory (:meth:`FusionPipeline.from_run`) or
a saved folder / Hub repository (:meth:`FusionPipeline.from_pretrained`, :mod:`fusionkit.inference.hub`),
then predict one lesion from raw photos and a metadata record (:meth:`FusionPipeline.predict`),
many lesions (:meth:`FusionPipeline.predict_batch`) or a MILK10k folder split
(:meth:`FusionPipeline.predict_split`, what ``fusionkit predict`` uses).

A prediction passes through this module, :mod:`~fusionkit.inference.inputs` (raw inputs checked
and encoded), :mod:`~fusionkit.runtime.predict` (the model run over a batch, with
:mod:`~fusionkit.runtime.tta`) and :mod:`~fusionkit.inference.decision` (the decision rule).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin

from fusionkit.data import (
    ImagePreprocessing,
    ImageTransform,
    MetadataEncoder,
    Milk10kDataset,
    build_transforms,
    find_split,
    make_loader,
    normalize_batch,
)
from fusionkit.data.schema import CLASS_NAMES
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.inference.decision import DEFAULT_DECISION, DecisionRecord, check_decision
from fusionkit.inference.inputs import collate_lesions, lesion_input
from fusionkit.metrics.conformal import ConformalCalibration, calibrate_conformal
from fusionkit.model import FusionModel
from fusionkit.runtime.checkpoint import load_checkpoint
from fusionkit.runtime.config import RunConfig, default_cache_dir, load_run_config
from fusionkit.runtime.predict import Predictions, check_model_batch, predict
from fusionkit.runtime.rundir import RunDir, refuse_escaping_links
from fusionkit.runtime.tta import check_tta

logger = logging.getLogger("fusionkit.inference")

WEIGHT_COLUMNS = ("alpha_I", "alpha_IM", "alpha_M")
"""Names of the fusion weights (eq 5) in a :class:`LesionPrediction`, in ``FusionOutput.weights`` column order."""


def image_preprocessing(model: FusionModel) -> ImagePreprocessing:
    """The image preprocessing of a built model: what its image encoders declare
    (:attr:`FusionModel.preprocessing`, at the model's ``image_size``), the one place the pipeline
    reads it. A model without image inputs never reads the photos; it gets the identity
    normalisation at its ``image_size``. A saved pipeline stores the result."""
    if model.preprocessing is not None:
        return model.preprocessing
    size = model.image_size or 1
    return ImagePreprocessing(input_size=size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def evaluation_transform(preprocessing: ImagePreprocessing) -> ImageTransform:
    """The evaluation transform of ``preprocessing`` (uint8 out; :func:`~fusionkit.data.normalize_batch`
    normalises on the device)."""
    return build_transforms(preprocessing=preprocessing, train=False, normalize=False)


def inference_spec(config: RunConfig) -> Any:
    """The model spec to rebuild trained weights into: no pretrained download, no backbone weights file.

    An encoder spec with a ``load_weights`` field (open_clip) keeps ``pretrained``, which also
    names its preprocessing, and is told ``load_weights: false`` instead.
    """
    spec = config.model
    encoder = spec.image_encoder
    if encoder is None:
        return spec
    fields = type(encoder).model_fields
    off = ("load_weights", False) if "load_weights" in fields else ("pretrained", False)
    updates = {k: v for k, v in (off, ("weights_file", None)) if k in fields}
    return spec.model_copy(update={"image_encoder": encoder.model_copy(update=updates)}) if updates else spec


@dataclass
class LesionPrediction:
    """What a pipeline says about one lesion.

    - ``probs``: class name -> the posterior P_final (eq 6), summing to 1;
    - ``classes``: the classes the decision rule predicts (its value ``> 0.5``); may be empty or
      hold several under the ``thresholds`` rule, exactly one under ``argmax``;
    - ``values``: class name -> the value the decision rule gives (what a submission CSV holds);
    - ``weights``: the fusion weights ``alpha_I``, ``alpha_IM``, ``alpha_M`` (eq 5), None for a
      decision without weights;
    - ``missing``: the modalities that were absent (``derm``, ``clinical``, ``meta``);
    - ``imputed``: metadata fields filled in because they were not given (``impute=True``).
    """

    lesion_id: str
    probs: dict[str, float]
    classes: list[str]
    values: dict[str, float]
    weights: dict[str, float] | None
    missing: list[str] = field(default_factory=list)
    imputed: list[str] = field(default_factory=list)
    decision: str = DEFAULT_DECISION

    @property
    def top(self) -> str:
        """The class with the highest probability."""
        return max(self.probs, key=self.probs.__getitem__)


@dataclass(frozen=True)
class RunSource:
    """Where a pipeline loaded from a run directory came from."""

    run_dir: Path
    checkpoint: str
    info: dict[str, Any]
    split: dict[str, Any]


class FusionPipeline(
    ModelHubMixin,
    library_name="fusionkit",
    tags=["fusionkit", "skin-lesion-classification", "dermatology", "multimodal", "milk10k"],
    docs_url="https://github.com/fusionkit/fusionkit",
):
    """A trained fusion model with its preprocessing, metadata encoder and decision rule.

    Build one with :meth:`from_run` or :meth:`from_pretrained` rather than by hand. ``run_config``
    is the run's resolved config (the model spec in full); ``provenance`` records where the model
    came from (source run, checkpoint epoch, validation metrics, training population, fusionkit
    version).
    """

    def __init__(
        self,
        *,
        model: FusionModel,
        encoder: MetadataEncoder | None,
        preprocessing: ImagePreprocessing,
        decision: DecisionRecord,
        run_config: RunConfig,
        provenance: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        source: RunSource | None = None,
        folder: Path | None = None,
    ) -> None:
        self.device = _device(device)
        self.model = model.to(self.device).eval()
        self.encoder = encoder
        self.preprocessing = preprocessing
        self.decision = decision
        self.run_config = run_config
        self.provenance = dict(provenance or {})
        self.source = source
        self.folder = folder
        """The saved folder this pipeline was loaded from (:meth:`from_pretrained` only)."""

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = None
    ) -> FusionPipeline:
        """Load a run directory written by the trainer (``checkpoint``: ``best`` or ``last``).

        The decision rule is the one stored at the end of training (``inference.json``); a run
        trained before fusionkit stored it has the ``thresholds`` rule without thresholds
        (:meth:`refit_decision` fits them from the run's validation split).
        """
        run_dir = Path(run_dir)
        files = RunDir(run_dir)
        if not files.config.is_file():
            raise ConfigError(f"{run_dir}: not a fusionkit run directory (no config.yaml)")
        refuse_escaping_links(run_dir)
        if checkpoint not in ("best", "last"):
            raise ConfigError(f"checkpoint must be 'best' or 'last', not {checkpoint!r}")
        config = load_run_config(files.config)
        encoder = MetadataEncoder.load(files.metadata_encoder) if files.metadata_encoder.is_file() else None
        width = encoder.metadata_width if encoder is not None else None
        model = FusionModel(inference_spec(config), metadata_width=width)
        if not files.checkpoint(checkpoint).is_file():
            raise ConfigError(
                f"{run_dir}: the run has no {checkpoint} checkpoint ({files.checkpoint(checkpoint)} is missing)"
            )
        info = load_checkpoint(files.checkpoint(checkpoint), model=model)
        split = _read_split(files.split) if files.split.is_file() else {}
        stored: dict[str, Any] = {}
        if files.inference.is_file():
            try:
                stored = json.loads(files.inference.read_text())
                decision = DecisionRecord.from_dict(stored["decision"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{files.inference}: not a readable decision record ({exc})") from None
        else:
            names = tuple(CLASS_NAMES[: config.model.num_classes])
            decision = DecisionRecord(rule=DEFAULT_DECISION, class_names=names)
        from fusionkit import __version__

        provenance = {
            "fusionkit_version": __version__,
            "source_run": str(run_dir.resolve()),
            "checkpoint": checkpoint,
            "epoch": info.get("epoch"),
            "validation": stored.get("validation"),
            "population": stored.get("population"),
        }
        return cls(
            model=model,
            encoder=encoder,
            preprocessing=image_preprocessing(model),
            decision=decision,
            run_config=config,
            provenance=provenance,
            device=device,
            source=RunSource(run_dir=run_dir, checkpoint=checkpoint, info=info, split=split),
        )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> FusionPipeline:
        """Load a folder written by :meth:`save` (or a Hub repository id, through
        ``huggingface_hub.snapshot_download``). Reads JSON and safetensors only: nothing is executed.

        Raises:
            ConfigError: a missing, corrupted or inconsistent file (the message names it).
        """
        from fusionkit.inference.hub import read_folder, resolve_folder

        local = Path(pretrained_model_name_or_path).is_dir()
        folder = resolve_folder(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            force_download=force_download,
        )
        # a Hub snapshot's files are links into the repository cache's blobs/ (two levels up)
        return cls(
            **read_folder(folder, boundary=None if local else folder.parent.parent), device=device, folder=folder
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        from fusionkit.inference.hub import write_folder

        write_folder(self, save_directory)

    def save(self, folder: str | Path) -> Path:
        """Write the pipeline to ``folder``: ``config.json``, ``model.safetensors``,
        ``metadata_encoder.json``, ``preprocessing.json`` and a ``README.md`` model card
        (``push_to_hub`` uploads the same files). Returns the folder.

        Raises:
            ConfigError: the model was composed from modules (no spec to rebuild it from).
        """
        from fusionkit.inference.hub import check_savable

        check_savable(self)
        self.save_pretrained(folder)
        return Path(folder)

    # -- what it is --------------------------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names, in the model's output order."""
        return tuple(self.decision.class_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The inputs the model uses (``derm``, ``clinical``, ``meta``)."""
        return tuple(self.model.modalities)

    @property
    def config(self) -> RunConfig:
        """The run config (alias of ``run_config``)."""
        return self.run_config

    @property
    def origin(self) -> Path:
        """Where the pipeline was loaded from: its run directory or its saved folder."""
        if self.source is not None:
            return self.source.run_dir
        if self.folder is not None:
            return self.folder
        raise FusionkitError("this pipeline was built in memory: it has no run directory or folder")

    @property
    def run_dir(self) -> Path:
        """The run directory this pipeline was loaded from (:meth:`from_run` only)."""
        return self._source().run_dir

    @property
    def split(self) -> dict[str, Any]:
        """The run's ``split.json``: the training folder and the training, validation and (held-out) test
        lesion ids (``"test"`` is empty or absent when the run has no test part)."""
        return self._source().split

    @property
    def checkpoint_info(self) -> dict[str, Any]:
        """The checkpoint's info (epoch, validation metrics)."""
        return self._source().info

    @property
    def data_root(self) -> Path:
        """The folder the run trained on."""
        return Path(self.split["root"])

    def _source(self) -> RunSource:
        if self.source is None:
            raise FusionkitError("this pipeline was not loaded from a run directory (use FusionPipeline.from_run)")
        return self.source

    def with_decision(self, rule: str) -> FusionPipeline:
        """A pipeline sharing this one's model under another decision rule (``probs``, ``argmax``, ``thresholds``)."""
        try:
            decision = self.decision.with_rule(rule)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return FusionPipeline(
            model=self.model,
            encoder=self.encoder,
            preprocessing=self.preprocessing,
            decision=decision,
            run_config=self.run_config,
            provenance=self.provenance,
            device=self.device,
            source=self.source,
            folder=self.folder,
        )

    def __repr__(self) -> str:
        where = f", from {self.source.run_dir}" if self.source is not None else ""
        return (
            f"FusionPipeline({self.run_config.model.name or 'model'}, inputs {list(self.modalities)}, "
            f"{len(self.class_names)} classes, decision {self.decision.rule!r}{where})"
        )

    # -- predicting a MILK10k folder ---------------------------------------------------------------
    def dataset(
        self, *, data_root: str | Path | None = None, split: str = "Training", lesion_ids: Sequence[str] | None = None
    ) -> Milk10kDataset:
        """An evaluation dataset (no augmentation, uint8 images) over ``split`` of a MILK10k folder
        (default: the folder the run trained on).

        The image cache lives in this user's cache folder (``$FUSIONKIT_CACHE`` or
        ``~/.cache/fusionkit``), never where the model's saved config says: a run or pipeline folder
        from elsewhere must not decide where this process writes and deletes files."""
        root = Path(data_root) if data_root is not None else self.data_root
        data = self.run_config.data
        return Milk10kDataset(
            files=find_split(root, split),
            lesion_ids=lesion_ids,
            encoder=self._encoder(),
            image_size=self.preprocessing.input_size,
            missing_image=data.missing_image,
            cache_dir=default_cache_dir() if data.cache else None,
            transform=evaluation_transform(self.preprocessing),
        )

    def validation_dataset(self, *, data_root: str | Path | None = None) -> Milk10kDataset:
        """The run's own validation split (read from ``data_root`` when the training folder moved)."""
        return self.dataset(data_root=data_root, lesion_ids=self.split["val"])

    def test_dataset(self, *, data_root: str | Path | None = None) -> Milk10kDataset:
        """The run's held-out test part (``data.test_fraction`` or a split file's ``"test"``).

        Raises:
            ConfigError: the run has no test part.
        """
        test = self.split.get("test") or []
        if not test:
            raise ConfigError(f"{self.run_dir / 'split.json'}: the run has no test part (data.test_fraction is 0)")
        return self.dataset(data_root=data_root, lesion_ids=test)

    def predict_dataset(
        self,
        dataset: Milk10kDataset,
        *,
        absent: Sequence[str] = (),
        progress: bool = False,
        desc: str = "predict",
        tta: str = "none",
    ) -> Predictions:
        """Posteriors for every lesion of ``dataset`` (``absent`` masks modalities out; ``tta``:
        ``none``, ``flips`` or ``d4``, see :mod:`fusionkit.runtime.tta`)."""
        train = self.run_config.train
        loader = make_loader(dataset, batch_size=train.eval_batch_size or 2 * train.batch_size)
        return self._run(loader, absent=absent, progress=progress, desc=desc, tta=tta)

    def predict_split(
        self,
        folder: str | Path,
        split: str = "Test",
        *,
        tta: str = "none",
        absent: Sequence[str] = (),
        progress: bool = False,
    ) -> Predictions:
        """Posteriors for every lesion of ``split`` of the MILK10k ``folder`` (apply the decision
        rule with ``pipe.decision.apply(preds.probs)``)."""
        check_tta(tta)
        return self.predict_dataset(
            self.dataset(data_root=folder, split=split), absent=absent, progress=progress, tta=tta, desc="predict"
        )

    def _run(self, loader: Any, *, absent: Sequence[str], progress: bool, desc: str, tta: str) -> Predictions:
        mean, std = self.preprocessing.mean, self.preprocessing.std
        return predict(
            self.model,
            loader,
            device=self.device,
            absent=absent,
            progress=progress,
            desc=desc,
            batch_transform=lambda b: normalize_batch(b, mean=mean, std=std),
            bf16=self.device.type == "cuda",
            tta=tta,
        )

    def _encoder(self) -> MetadataEncoder:
        if self.encoder is not None:
            return self.encoder
        encoder = MetadataEncoder()  # a model without metadata: the encoded vector is never used
        encoder.age_mean, encoder.age_std, encoder.monet_mean, encoder.monet_std = 0.0, 1.0, (0.0,) * 14, (1.0,) * 14
        return encoder

    # -- predicting raw lesions --------------------------------------------------------------------
    def predict(
        self,
        *,
        derm: Any = None,
        clinical: Any = None,
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        tta: str = "none",
        absent: Sequence[str] = (),
        impute: bool = False,
        lesion_id: str | None = None,
    ) -> LesionPrediction:
        """Predict one lesion from its photos and metadata.

        Each photo is a path, a PIL image, a uint8 ``(H, W, 3)`` array or a ``(3, H, W)`` tensor;
        a photo not given (None) is a missing modality (presence mask False). ``metadata`` is the
        lesion's metadata CSV rows (list of ``csv.DictReader`` dicts) or one dict of lesion-level
        columns with per-image columns prefixed ``derm.``/``clinical.`` (see
        :mod:`fusionkit.inference.inputs`). A field the metadata encoder needs but is not given is
        refused unless ``impute=True``. ``absent`` masks modalities out; ``tta`` as in
        :meth:`predict_dataset`.
        """
        return self.predict_batch(
            [
                {
                    "derm": derm,
                    "clinical": clinical,
                    "metadata": metadata,
                    "absent": absent,
                    "impute": impute,
                    "lesion_id": lesion_id,
                }
            ],
            tta=tta,
        )[0]

    def predict_batch(self, lesions: Sequence[Mapping[str, Any]], *, tta: str = "none") -> list[LesionPrediction]:
        """Predict many lesions; each is a dict of :meth:`predict`'s keyword arguments
        (``derm``, ``clinical``, ``metadata``, optionally ``absent``, ``impute``, ``lesion_id``)."""
        check_tta(tta)
        allowed = {"derm", "clinical", "metadata", "absent", "impute", "lesion_id"}
        checked = []
        for i, lesion in enumerate(lesions):
            extra = set(lesion) - allowed
            if extra:
                raise ConfigError(f"lesion {i}: unknown keys {sorted(extra)}; expected some of {sorted(allowed)}")
            checked.append(
                lesion_input(
                    derm=lesion.get("derm"),
                    clinical=lesion.get("clinical"),
                    metadata=lesion.get("metadata"),
                    encoder=self.encoder,
                    image_size=self.preprocessing.input_size,
                    model_modalities=self.modalities,
                    absent=tuple(lesion.get("absent") or ()),
                    impute=bool(lesion.get("impute", False)),
                    lesion_id=lesion.get("lesion_id"),
                    default_id=f"lesion_{i:06d}",
                )
            )
        if not checked:
            return []
        batch = collate_lesions(checked, image_size=self.preprocessing.input_size)
        check_model_batch(batch, modalities=self.modalities, metadata_width=self.model.metadata_width)
        ids = batch["lesion_id"]
        preds = self._run([batch], absent=(), progress=False, desc="predict", tta=tta)
        order = {lesion_id: i for i, lesion_id in enumerate(preds.lesion_ids)}
        values = self.decision.apply(preds.probs)
        chosen = self.decision.predicted(preds.probs)
        out = []
        for item, lesion_id in zip(checked, ids, strict=True):
            i = order[lesion_id]
            weights = None
            if preds.weights is not None:
                weights = {k: float(v) for k, v in zip(WEIGHT_COLUMNS, preds.weights[i], strict=True)}
            out.append(
                LesionPrediction(
                    lesion_id=lesion_id,
                    probs={c: float(p) for c, p in zip(self.class_names, preds.probs[i], strict=True)},
                    classes=chosen[i],
                    values={c: float(v) for c, v in zip(self.class_names, values[i], strict=True)},
                    weights=weights,
                    missing=list(item.missing),
                    imputed=list(item.imputed),
                    decision=self.decision.rule,
                )
            )
        return out

    # -- export ------------------------------------------------------------------------------------
    def export_onnx(self, path: str | Path) -> Path:
        """Export the model to ONNX at ``path`` with a JSON sidecar (same name, ``.json``) holding
        the preprocessing, metadata encoder, class names and decision rule with its thresholds."""
        from fusionkit.inference.export import export_onnx

        return export_onnx(self, out=path)

    # -- conformal prediction sets ----------------------------------------------------------------
    def validation_posteriors(
        self, *, tta: str = "none", data_root: str | Path | None = None, progress: bool = False
    ) -> tuple[Predictions, str]:
        """The run's validation posteriors and where they came from.

        Without TTA they are those stored at the end of training (``inference.json``, written by
        :func:`store_run_decision`), so no training data is read; a run trained before fusionkit
        stored them, or ``tta`` other than ``none``, predicts the validation split again (reading
        the training folder, or ``data_root`` where it moved). Returns ``(predictions, origin)``.
        """
        check_tta(tta)
        if tta == "none" and self.source is not None and RunDir(self.run_dir).inference.is_file():
            stored = json.loads(RunDir(self.run_dir).inference.read_text()).get("validation_posteriors")
            if stored:
                try:
                    probs = np.asarray(stored["probs"], dtype=np.float64)
                    with np.errstate(divide="ignore"):
                        log_probs = np.log(probs)
                    preds = Predictions(
                        lesion_ids=list(stored["lesion_ids"]),
                        labels=np.asarray(stored["labels"], dtype=np.int64),
                        probs=probs,
                        log_probs=log_probs,
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ConfigError(
                        f"{RunDir(self.run_dir).inference}: unreadable validation_posteriors ({exc})"
                    ) from None
                return preds, "validation posteriors stored at the end of training (inference.json)"
        preds = self.predict_dataset(
            self.validation_dataset(data_root=data_root), progress=progress, desc="validation", tta=tta
        )
        return preds, f"validation split predicted again (TTA {tta})"

    def conformal(
        self,
        *,
        alpha: float = 0.1,
        method: str = "lac",
        class_conditional: bool = False,
        tta: str = "none",
        data_root: str | Path | None = None,
    ) -> ConformalCalibration:
        """Split-conformal thresholds calibrated on the run's validation split
        (:func:`fusionkit.metrics.conformal.calibrate_conformal`; posteriors from
        :meth:`validation_posteriors`); ``calibration.predict_sets(probs)`` gives the sets."""
        preds, _ = self.validation_posteriors(tta=tta, data_root=data_root)
        if preds.labels is None:
            raise ConfigError("conformal calibration needs a labelled validation split")
        try:
            return calibrate_conformal(
                preds.probs,
                preds.labels,
                self.class_names,
                alpha=alpha,
                method=method,  # type: ignore[arg-type]
                class_conditional=class_conditional,
            )
        except ValueError as exc:
            raise ConfigError(f"conformal calibration: {exc}") from None

    # -- the decision rule -------------------------------------------------------------------------
    def refit_decision(
        self,
        *,
        data_root: str | Path | None = None,
        tta: str = "none",
        min_positives: int | None = None,
        progress: bool = False,
    ) -> DecisionRecord:
        """Fit the thresholds again on the run's validation split (read from the training folder, or
        ``data_root`` where it moved); returns the new record (``pipe.decision`` is replaced)."""
        from fusionkit.inference.decision import MIN_POSITIVES, fit_decision

        root = data_root if (data_root is not None and not self.data_root.is_dir()) else None
        preds = self.predict_dataset(self.validation_dataset(data_root=root), tta=tta, progress=progress)
        self.decision = fit_decision(
            preds.labels,
            preds.probs,
            self.class_names,
            rule=self.decision.rule,
            min_positives=MIN_POSITIVES if min_positives is None else min_positives,
            tta=tta,
        )
        return self.decision


def _read_split(path: Path) -> dict[str, Any]:
    """A run's ``split.json``: an object whose ``root`` is a path and whose parts are lists of lesion ids;
    anything else is a :class:`ConfigError` naming the file."""
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc}); the run is damaged") from None
    if not isinstance(split, dict):
        raise ConfigError(f"{path}: holds {type(split).__name__}; expected the run's split (an object)")
    for key, value in split.items():
        if key == "root":
            ok = isinstance(value, str)
        elif key in ("train", "val", "test"):
            ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
        else:
            ok = True  # other records (folds, seeds) are not read here
        if not ok:
            raise ConfigError(
                f"{path}: {key!r} is {type(value).__name__}; expected {'a path' if key == 'root' else 'a list of lesion ids'}"
            )
    if "train" not in split or "val" not in split:
        raise ConfigError(f"{path}: no 'train' and 'val' lesion lists; expected the run's split")
    return split


def _device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(
    run_dir: str | Path, *, checkpoint: str = "best", device: str | torch.device | None = None
) -> FusionPipeline:
    """:meth:`FusionPipeline.from_run` (the run directory's pipeline)."""
    return FusionPipeline.from_run(run_dir, checkpoint=checkpoint, device=device)


def validation_summary(labels: Any, probs: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """The validation metrics a pipeline carries: macro and per-class Dice, AUC, sensitivity, specificity."""
    from fusionkit.metrics import isic_metrics

    metrics = isic_metrics(labels, probs, list(class_names))
    keys = ("dice", "auc", "sensitivity", "specificity", "ap")
    clean = lambda v: None if v is None or not np.isfinite(v) else float(v)  # noqa: E731
    return {
        "lesions": int(len(labels)),
        "macro": {k: clean(metrics["macro"].get(k)) for k in keys},
        "per_class": {
            c: {
                **{k: clean(metrics["per_class"][k][c]) for k in keys},
                "positives": int(np.sum(np.asarray(labels) == i)),
            }
            for i, c in enumerate(class_names)
        },
    }


def training_population(data_root: str | Path, lesion_ids: Sequence[str]) -> dict[str, Any] | None:
    """Who the training lesions came from: counts by skin tone, site and sex, and the age range
    (for the model card); None when the training folder cannot be read."""
    from collections import Counter

    from fusionkit.data.tables import read_metadata

    try:
        records = read_metadata(find_split(Path(data_root), "Training").metadata_csv)
    except FusionkitError:
        return None
    keep = set(lesion_ids)
    chosen = [r for r in records if r.lesion_id in keep] if keep else records
    count = lambda values: dict(sorted(Counter("unknown" if v is None else str(v) for v in values).items()))  # noqa: E731
    ages = [r.age for r in chosen if r.age is not None]
    return {
        "lesions": len(chosen),
        "skin_tone": count(r.skin_tone for r in chosen),
        "site": count(r.site for r in chosen),
        "sex": count(r.sex for r in chosen),
        "age": {"min": min(ages), "max": max(ages)} if ages else None,
    }


def store_run_decision(
    run_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    min_positives: int | None = None,
    progress: bool = False,
) -> Path:
    """Fit the decision rule on the run's validation split with its best checkpoint and store it,
    with the validation metrics and the training population, in the run's ``inference.json``.

    Called once at the end of training; ``fusionkit predict`` then never reads the training data.
    """
    from fusionkit.inference.decision import MIN_POSITIVES, fit_decision
    from fusionkit.utils.io import atomic_write_text

    pipe = FusionPipeline.from_run(run_dir, device=device)
    preds = pipe.predict_dataset(pipe.validation_dataset(), progress=progress, desc="fit decision")

    record = fit_decision(
        preds.labels,
        preds.probs,
        pipe.class_names,
        min_positives=MIN_POSITIVES if min_positives is None else min_positives,
    )
    state = {
        "format": "fusionkit.inference",
        "version": 1,
        "decision": record.to_dict(),
        "validation": validation_summary(preds.labels, preds.probs, pipe.class_names),
        "population": training_population(pipe.data_root, pipe.split.get("train", [])),
        # the posteriors the rule was fitted on: conformal sets are calibrated on them at predict time
        "validation_posteriors": {
            "lesion_ids": list(preds.lesion_ids),
            "labels": [int(v) for v in np.asarray(preds.labels)],
            "probs": np.asarray(preds.probs, dtype=np.float64).tolist(),
        },
    }
    path = RunDir(run_dir).inference
    atomic_write_text(path, json.dumps(state, indent=2))
    not_fitted = [c for c, f in zip(record.class_names, record.fitted or (), strict=True) if not f]
    logger.info(
        "decision rule %r stored in %s (thresholds fitted on %d validation lesions; %s keep 0.5: fewer than %d positives)",
        record.rule,
        path,
        record.lesions,
        ", ".join(not_fitted) or "no class",
        record.min_positives,
    )
    return path


__all__ = [
    "FusionPipeline",
    "ImagePreprocessing",
    "LesionPrediction",
    "RunSource",
    "check_decision",
    "image_preprocessing",
    "load_run",
    "store_run_decision",
]
