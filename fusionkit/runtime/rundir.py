"""The files of a run directory, named once for the trainer, the evaluation and the sweep.

A run directory holds::

    config.yaml                    the resolved run config (the model spec in full)
    metadata_encoder.json          the metadata encoding fitted on the training split
    split.json                     the lesion ids of the training and validation splits and of the
                                   held-out test part ("test", empty without data.test_fraction)
    checkpoints/last.safetensors   model, optimizer, scheduler, RNG state (resumable)
    checkpoints/best.safetensors   the weights with the best validation score
    history.json / train.log       one record/line per epoch
    resumes.json                   one record per resume (when, from where, what changed)
    run.lock                       pid and host of the process training it (while it trains)
    inference.json                 the decision rule (thresholds fitted on the validation split at the
                                   end of training), validation metrics, training population
    report.md, metrics.*, *.png    the evaluation of the best checkpoint (fusionkit.evaluate), on the
                                   test part when there is one; evaluated.json says which lesions
    in-sample/                     an evaluation of training lesions, when asked for (never report.md)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fusionkit.errors import ConfigError


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files in the run directory ``root`` (see the module docstring)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """The resolved run config (``config.yaml``)."""
        return self.root / "config.yaml"

    @property
    def metadata_encoder(self) -> Path:
        """The fitted metadata encoding (``metadata_encoder.json``)."""
        return self.root / "metadata_encoder.json"

    @property
    def split(self) -> Path:
        """The training, validation and held-out test lesion ids (``split.json``)."""
        return self.root / "split.json"

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder."""
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.safetensors`` (``best`` or ``last``)."""
        return self.checkpoints / f"{name}.safetensors"

    @property
    def history(self) -> Path:
        """One JSON record per epoch (``history.json``)."""
        return self.root / "history.json"

    @property
    def log(self) -> Path:
        """The training log (``train.log``)."""
        return self.root / "train.log"

    @property
    def resumes(self) -> Path:
        """One record per resume (``resumes.json``)."""
        return self.root / "resumes.json"

    @property
    def lock(self) -> Path:
        """The run lock (``run.lock``), present while a process trains the run."""
        return self.root / "run.lock"

    @property
    def report(self) -> Path:
        """The evaluation report (``report.md``)."""
        return self.root / "report.md"

    @property
    def inference(self) -> Path:
        """What predicting needs beyond the weights, fitted at the end of training (``inference.json``):
        the decision rule with its thresholds, the validation metrics, the training population."""
        return self.root / "inference.json"


def refuse_escaping_links(folder: str | Path, *, boundary: str | Path | None = None) -> None:
    """Refuse, in one line, a loaded folder holding a symbolic link that leads outside it.

    Loading a run directory or a saved pipeline reads the files in it and evaluating writes beside
    them; a link (to a file or a folder, at any depth) whose target lies outside ``boundary``
    (default: the folder itself) would make either reach elsewhere, so it is refused, naming the
    link and where it leads. Links inside the folder are fine. ``boundary`` is wider for a Hugging
    Face Hub snapshot, whose files are links into the repository's ``blobs/`` folder.

    Raises:
        ConfigError: the link that leads outside (the first found, in sorted order).
    """
    root = Path(folder)
    limit = Path(boundary if boundary is not None else folder).resolve()
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath, name)
            if path.is_symlink() and not path.resolve().is_relative_to(limit):
                raise ConfigError(
                    f"{path}: a symbolic link leading outside {root} (to {os.readlink(path)}); a loaded folder "
                    "reads and writes only inside itself: copy the file in instead of linking it"
                )
