"""``run_sweep``: check everything, build the shared image cache, run what is not finished, summarise.

Progress is one line per run start and end (variant, seed, fold, macro Dice, elapsed) with an ETA
for the whole sweep from the runs finished so far.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fusionkit.errors import ConfigError
from fusionkit.sweep.execute import Engine, in_process, is_finished, read_record
from fusionkit.sweep.plan import SweepJob
from fusionkit.sweep.summary import write_summary
from fusionkit.utils.io import atomic_write_text

logger = logging.getLogger("fusionkit.sweep")

PLAN_FILE = "sweep.json"
"""What the sweep was asked to run (reference, presets, seeds, folds), in ``OUT``."""


def prepare_data_root(jobs: list[SweepJob], *, out: Path, data_root: Path | None, synthetic: bool) -> Path:
    """The MILK10k folder every run reads: ``data_root``, or one generated set in ``OUT/synthetic``
    (from the config's ``data.synthetic``). Checks the layout; raises :class:`ConfigError`."""
    from fusionkit.data import find_split, make_synthetic_milk10k

    if synthetic:
        root = out / "synthetic"
        if not (root / "MILK10k_Training_GroundTruth.csv").is_file():
            s = jobs[0].run_config().data.synthetic
            make_synthetic_milk10k(root, n_lesions=s.n_lesions, photo_size=s.photo_size, seed=s.seed)
    else:
        given = data_root or jobs[0].run_config().data.root
        if given is None:
            raise ConfigError("no data: pass --data DIR (a MILK10k folder), --synthetic, or set data.root")
        root = Path(given)
    files = find_split(root, "Training")
    if files.ground_truth_csv is None:
        raise ConfigError(f"{root}: a sweep needs the labelled Training split (MILK10k_Training_GroundTruth.csv)")
    return Path(root)


def build_image_caches(jobs: list[SweepJob], data_root: Path) -> None:
    """Build each image cache the runs need once, before the first run (later runs only open it)."""
    from fusionkit.data import Milk10kDataset, find_split
    from fusionkit.runtime.config import default_cache_dir

    done = set()
    for job in jobs:
        config = job.run_config()
        if not config.data.cache or not config.model.image_modalities:
            continue
        key = (config.model.image_size, config.data.cache_dir, config.data.missing_image)
        if key in done:
            continue
        done.add(key)
        Milk10kDataset(
            files=find_split(data_root, "Training"),
            image_size=config.model.image_size,
            cache_dir=config.data.cache_dir or default_cache_dir(),
            missing_image=config.data.missing_image,
        )


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_sweep(
    jobs: list[SweepJob],
    *,
    out: Path,
    data_root: Path,
    reference: str = "ji-adf",
    engine: Engine | None = None,
    n_boot: int = 1000,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every unfinished job through ``engine`` (default: in this process), then write the summary.

    Finished runs are skipped; each failure is recorded and the sweep goes on; ``KeyboardInterrupt``
    stops it (the running run keeps its resumable checkpoint). Returns the summary mapping.
    """
    if reference not in {j.preset for j in jobs}:
        raise ConfigError(
            f"--reference {reference!r} is not one of the sweep's presets ({', '.join(dict.fromkeys(j.preset for j in jobs))})"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / PLAN_FILE,
        json.dumps(
            {
                "reference": reference,
                "data_root": str(data_root),
                "presets": list(dict.fromkeys(j.preset for j in jobs)),
                "seeds": sorted({j.seed for j in jobs}),
                "folds": None if jobs[0].fold is None else len({j.fold for j in jobs}),
            },
            indent=1,
        )
        + "\n",
    )
    todo = [j for j in jobs if not is_finished(j)]
    skipped = len(jobs) - len(todo)
    if skipped:
        echo(f"sweep: {skipped} of {len(jobs)} runs already finished (skipped)")
    if todo:
        build_image_caches(todo, data_root)
    engine = engine or in_process()
    began = time.perf_counter()
    by_dir = {j.run_dir: j for j in todo}
    done = 0

    def started(job: SweepJob) -> None:
        echo(f"start {job.label}")

    for record in engine(todo, started):
        done += 1
        job = by_dir[record["run_dir"]]
        elapsed = time.perf_counter() - began
        eta = elapsed / done * (len(todo) - done)  # throughput so far: parallel engines included
        result = (
            f"macro Dice {record['metrics']['dice']:.4f}"
            if record["status"] == "ok"
            else f"FAILED: {record.get('reason')}"
        )
        echo(
            f"[{done + skipped}/{len(jobs)}] done {job.label}: {result} ({record.get('seconds') or 0:.1f} s; "
            f"sweep {_fmt_time(elapsed)}, ETA {_fmt_time(eta)})"
        )
    records = [r for r in (read_record(j.run_dir) for j in jobs) if r is not None]
    return write_summary(out, reference=reference, records=records, n_boot=n_boot)
