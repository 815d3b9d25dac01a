"""How a run starts: the keyword options :class:`~fusionkit.train.trainer.Trainer`,
:func:`~fusionkit.train.trainer.train_run` and :func:`fusionkit.evaluate.train_and_evaluate` share."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from fusionkit.runtime.rundir import Resume


class RunOptions(TypedDict, total=False):
    """The start options, each optional (the default in brackets)."""

    data_root: str | Path | None
    """The MILK10k folder to read [``data.root`` of the config; a resumed run's recorded one]."""
    synthetic: bool
    """Generate a small synthetic MILK10k set into the run directory and train on it [False]."""
    resume: Resume
    """Continue the run in the folder (:data:`fusionkit.runtime.rundir.Resume`; ``"auto"``: when it
    was started with this config, else start over) [False]."""
    overwrite: bool
    """Delete the run in the folder and start over [False]."""
    progress: bool
    """Progress bars (on a terminal; see :func:`fusionkit.utils.progress.bars_enabled`) [True]."""
