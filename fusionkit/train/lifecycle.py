"""The run directory's claim under torch.distributed: rank 0 claims, every rank learns the outcome."""

from __future__ import annotations

import logging

from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.runtime.config import RunConfig, load_run_config
from fusionkit.runtime.distributed import DistInfo, broadcast_object
from fusionkit.runtime.rundir import Resume, RunDir, RunStart

logger = logging.getLogger("fusionkit.train")


def claim_on_every_rank(
    run: RunDir,
    dist: DistInfo,
    *,
    resume: Resume,
    overwrite: bool,
    requested: RunConfig,
    synthetic: bool,
) -> RunStart:
    """Rank 0 claims ``run`` (:meth:`RunDir.claim <fusionkit.runtime.rundir.RunDir.claim>`: lock,
    then start, resume, start over or refuse) and tells every rank how the run starts.

    Raises:
        RunLockedError, ConfigError: rank 0's refusal, raised on every rank (told to the others
            first, or they would wait forever).
    """
    start = RunStart(saved=None)
    refused: FusionkitError | None = None
    if dist.is_main:
        try:
            start = run.claim(resume=resume, overwrite=overwrite, requested=requested, synthetic=synthetic)
        except FusionkitError as exc:
            refused = exc
        if start.restarted:
            logger.warning("%s: no checkpoint yet; starting the run from the beginning", run.root)
    # a broadcast, not a barrier: the other ranks learn whether rank 0 took the run directory
    reason, from_checkpoint = broadcast_object(dist, (None if refused is None else str(refused), start.from_checkpoint))
    if refused is not None:
        raise refused
    if reason is not None:
        raise ConfigError(f"rank 0 refused the run: {reason}")
    if not dist.is_main and from_checkpoint:
        start = RunStart(saved=load_run_config(run.config))
    return start
