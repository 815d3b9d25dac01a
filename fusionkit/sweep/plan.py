"""What a sweep runs: the paper's variant groups, seeds, folds, and one :class:`SweepJob` per run.

Every variant of one seed (and fold) gets the same ``train.seed`` and ``data.split_seed``, so all
variants see the same lesion-level split and the same training-data order: comparisons are paired.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fusionkit.errors import ConfigError
from fusionkit.presets import PRESET_ALIASES, list_presets
from fusionkit.runtime.config import RunConfig, load_run_config

TABLE2_ROWS: tuple[tuple[str, str], ...] = (
    ("C", "clinical-only"),
    ("D", "derm-only"),
    ("M", "meta-only"),
    ("C+D", "derm-clinical"),
    ("C+M", "ji-adf-cm"),
    ("D+M", "ji-adf-dm"),
    ("C+D+M", "ji-adf"),
)
"""The paper's Table 2 (modality subsets): row label and preset, in the paper's row order."""

TABLE3_ROWS: tuple[tuple[str, str], ...] = (
    ("Skip-only", "skip-only"),
    ("Attention-only", "attention-only"),
    ("Attention + Skip", "ji-adf"),
)
"""The paper's Table 3 (the MMFA branches): row label and preset."""

FIGURE3_BARS: tuple[tuple[str, str], ...] = (
    ("Late concat", "late-concat"),
    ("JF-concat", "jf-concat"),
    ("JF-MMFA", "jf-mmfa"),
    ("JI-MMFA", "ji-mmfa"),
    ("JI-ADF (no aux)", "ji-adf-noaux"),
    ("JI-ADF", "ji-adf"),
)
"""The paper's Figure 3 (fusion strategies): bar label and preset, in the paper's order."""

GROUPS: dict[str, tuple[str, ...]] = {
    "table2": tuple(p for _, p in TABLE2_ROWS),
    "table3": tuple(p for _, p in TABLE3_ROWS),
    "figure3": tuple(p for _, p in FIGURE3_BARS),
}
GROUPS["all"] = tuple(dict.fromkeys(GROUPS["table2"] + GROUPS["table3"] + GROUPS["figure3"]))
"""``--group`` names and their presets (``all``: every preset of Tables 2-3 and Figure 3, once)."""

DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
"""Seeds run when none are given (three, so every variant gets a spread)."""


@dataclass(frozen=True)
class SweepJob:
    """One run of a sweep: a variant (preset) at one seed and optionally one fold.

    ``config`` is the requested run config (JSON-ready mapping, before the trainer fills in the
    metadata width); ``data_root`` the MILK10k folder every run of the sweep reads.
    """

    preset: str
    seed: int
    fold: int | None
    run_dir: str
    data_root: str
    config: dict[str, Any]

    @property
    def label(self) -> str:
        """``preset seed k[ fold j]`` for progress lines."""
        return f"{self.preset} seed {self.seed}" + ("" if self.fold is None else f" fold {self.fold}")

    @property
    def slug(self) -> str:
        """``preset-seedK[-foldJ]``, a file-name form of the label."""
        return f"{self.preset}-seed{self.seed}" + ("" if self.fold is None else f"-fold{self.fold}")

    def run_config(self) -> RunConfig:
        """The validated run config."""
        return RunConfig.model_validate(self.config)

    def to_json(self) -> str:
        """The job as JSON (what a subprocess or a SLURM job receives)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SweepJob:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; a :class:`ConfigError` names what did not parse."""
    parts = [p.strip() for p in text.split(",")]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is listed twice")
    return seeds


def select_presets(*, group: str | None, presets: str | None) -> tuple[str, ...]:
    """The presets named by ``--group`` or ``--presets`` (exactly one of them; default ``all``)."""
    if group is not None and presets is not None:
        raise ConfigError("give either --group or --presets, not both")
    if presets is not None:
        # the old names load_preset accepts (PRESET_ALIASES) are accepted here too, as their current name
        names = tuple(dict.fromkeys(PRESET_ALIASES.get(p.strip(), p.strip()) for p in presets.split(",") if p.strip()))
        if not names:
            raise ConfigError("--presets is empty; expected comma-separated preset names")
        known = set(list_presets())
        for name in names:
            if name not in known:
                raise ConfigError(f"--presets: unknown preset {name!r} (presets: {', '.join(sorted(known))})")
        return names
    group = group or "all"
    if group not in GROUPS:
        raise ConfigError(f"--group: unknown group {group!r}; expected one of {', '.join(GROUPS)}")
    return GROUPS[group]


def resolve_reference(presets: tuple[str, ...], reference: str | None) -> str:
    """The variant others are compared against: ``reference`` (must be in the sweep), else
    ``ji-adf`` when it runs, else the first preset."""
    if reference is None:
        return "ji-adf" if "ji-adf" in presets else presets[0]
    if reference not in presets:
        raise ConfigError(f"--reference {reference!r} is not one of the sweep's presets ({', '.join(presets)})")
    return reference


def split_overrides(sets: list[str], presets: tuple[str, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate ``key=value`` overrides for every run from ``PRESET:key=value`` ones for one variant."""
    common: list[str] = []
    per_preset: dict[str, list[str]] = {}
    for item in sets:
        key = item.split("=", 1)[0]
        if ":" in key:
            preset, _, rest = item.partition(":")
            if preset not in presets:
                raise ConfigError(f"--set {item!r}: {preset!r} is not a preset of this sweep ({', '.join(presets)})")
            per_preset.setdefault(preset, []).append(rest)
        else:
            common.append(item)
    return common, per_preset


def bind_data_root(jobs: list[SweepJob], root: Path) -> list[SweepJob]:
    """The jobs reading ``root``: it becomes ``data.root`` of each requested config, and
    ``data.synthetic`` is dropped (the runs read the folder; a generated set is made once by the
    sweep), so the request matches what each run records as having run."""
    root = Path(root).expanduser().resolve()
    out = []
    for job in jobs:
        data = {k: v for k, v in job.config["data"].items() if k != "synthetic"}
        config = {**job.config, "data": {**data, "root": str(root)}}
        out.append(
            SweepJob(
                preset=job.preset, seed=job.seed, fold=job.fold, run_dir=job.run_dir, data_root=str(root), config=config
            )
        )
    return out


def run_dir_of(out: Path, preset: str, seed: int, fold: int | None) -> Path:
    """``OUT/runs/<preset>/seed<k>[/fold<j>]``."""
    path = out / "runs" / preset / f"seed{seed}"
    return path if fold is None else path / f"fold{fold}"


def plan_sweep(
    config_path: str | Path,
    *,
    presets: tuple[str, ...] | None,
    seeds: tuple[int, ...],
    folds: int | None,
    out: Path,
    data_root: Path,
    sets: list[str] | None = None,
) -> list[SweepJob]:
    """One validated job per (preset, seed[, fold]), seed-major so early results pair up.

    The config's ``model`` section must name a preset (``preset:`` plus optional ``overrides:``):
    each job swaps in its own preset and keeps the overrides. ``sets`` apply to every run
    (``key=value``) or to one variant (``PRESET:key=value``). With ``presets=None`` the config's own
    model is the one variant (named after its preset, or after the config file when its model is a
    full spec): what ``fusionkit train CONFIG --folds K`` runs. Raises :class:`ConfigError` (a
    :class:`~fusionkit.errors.ConfigFieldError` naming the config file for a field, ``--set`` ones
    included, that fails validation) before anything runs.
    """
    if folds is not None and folds < 2:
        raise ConfigError(f"--folds {folds}: k-fold cross-validation needs at least 2 folds")
    if not seeds:
        raise ConfigError("--seeds is empty; expected at least one seed")
    from fusionkit.specs.io import read_mapping

    raw = read_mapping(config_path)
    model = raw.get("model")
    own = presets is None
    names: tuple[str, ...]
    if presets is None:
        names = (model["preset"] if isinstance(model, dict) and "preset" in model else Path(config_path).stem,)
    elif not isinstance(model, dict) or "preset" not in model:
        raise ConfigError(
            f"{config_path}: a sweep config's model section must be 'preset: NAME' with optional "
            "'overrides:' (each run swaps in its own preset)"
        )
    else:
        names = presets
    common, per_preset = split_overrides(list(sets or []), names)
    jobs = []
    for seed in seeds:
        for fold in [None] if folds is None else range(folds):
            for preset in names:
                overrides = [
                    *([] if own else [f"model.preset={preset}"]),
                    *common,
                    *per_preset.get(preset, []),
                    f"train.seed={seed}",
                    f"data.split_seed={seed}",
                ]
                if fold is not None:
                    overrides += [f"data.folds={folds}", f"data.fold={fold}"]
                config = load_run_config(config_path, overrides)
                jobs.append(
                    SweepJob(
                        preset=preset,
                        seed=seed,
                        fold=fold,
                        run_dir=str(run_dir_of(out, preset, seed, fold)),
                        data_root=str(data_root),
                        config=config.model_dump(mode="json"),
                    )
                )
    return jobs
