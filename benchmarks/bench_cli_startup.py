"""Command-line start-up: ``fusionkit --help`` versus ``python -c "import torch"``, side by side.

Issue 21 asks that ``fusionkit --help`` take at most half the time of importing torch on the same
machine. Both are timed as fresh processes (wall clock, ``subprocess.run`` to exit) in paired runs:
each pair runs the two commands back to back, in alternating order, so a change in machine load
hits both; after one untimed warm-up of each (the file cache), ``--repeats`` pairs (default 5)
give the medians and the median of the per-pair ratios. ``fusionkit`` is the console script next
to this interpreter, run on this checkout (``PYTHONPATH``). The other light commands (``train
--help``, ``presets``, ``components``, ``schema``, ``--version``) and a bare interpreter start are
timed alone, the same number of times, for reference against the paired ``import torch`` median.

Run: ``python benchmarks/bench_cli_startup.py`` (writes benchmarks/results/cli-startup-<date>.json and .md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fusionkit.utils.io import atomic_write_text  # noqa: E402

TARGET = 0.5
"""``fusionkit --help`` at most this fraction of ``import torch`` (issue 21)."""


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fusionkit_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m fusionkit.cli``."""
    script = Path(sys.executable).with_name("fusionkit")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fusionkit.cli"]


def wall_time(command: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of ``command`` (its output discarded); it must succeed."""
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def paired(a: list[str], b: list[str], *, repeats: int, env: dict[str, str]) -> dict[str, list[float]]:
    """``repeats`` pairs of (a, b) times, the order alternating per pair, after one warm-up each."""
    wall_time(a, env), wall_time(b, env)
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(repeats):
        order = [("a", a), ("b", b)] if i % 2 == 0 else [("b", b), ("a", a)]
        for key, command in order:
            times[key].append(wall_time(command, env))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Timed pairs per command (median of these).")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    import torch  # only for its version in the record; the timings run in fresh processes

    fk = fusionkit_command()
    torch_cmd = [sys.executable, "-c", "import torch"]
    load_before = os.getloadavg()
    cases = {
        "fusionkit --help": [*fk, "--help"],
        "fusionkit train --help": [*fk, "train", "--help"],
        "fusionkit --version": [*fk, "--version"],
        "fusionkit presets": [*fk, "presets"],
        "fusionkit components": [*fk, "components"],
        "fusionkit schema": [*fk, "schema"],
        'python -c "pass"': [sys.executable, "-c", "pass"],
    }
    times = paired(cases.pop("fusionkit --help"), torch_cmd, repeats=args.repeats, env=env)
    torch_median = statistics.median(times["b"])
    rows = [
        {
            "command": "fusionkit --help",
            "seconds": times["a"],
            "torch_seconds": times["b"],
            "median_s": statistics.median(times["a"]),
            "ratio_of_medians": statistics.median(times["a"]) / torch_median,
            "median_pair_ratio": statistics.median(a / b for a, b in zip(times["a"], times["b"], strict=True)),
        }
    ]
    for name, command in cases.items():
        wall_time(command, env)
        alone = [wall_time(command, env) for _ in range(args.repeats)]
        rows.append(
            {
                "command": name,
                "seconds": alone,
                "median_s": statistics.median(alone),
                "ratio_of_medians": statistics.median(alone) / torch_median,
            }
        )
    print(f"{'import torch':24s} {torch_median:.3f} s")
    for row in rows:
        print(f"{row['command']:24s} {row['median_s']:.3f} s   {row['ratio_of_medians']:.2f}x import torch")
    load_after = os.getloadavg()
    help_row = rows[0]
    met = help_row["ratio_of_medians"] <= TARGET
    now = dt.datetime.now(dt.UTC)
    record = {
        "benchmark": "cli-startup",
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fusionkit_command": " ".join([Path(fk[0]).name, *fk[1:]]),
        "torch_median_s": torch_median,
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "target_met": met,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cli-startup-{now:%Y-%m-%d}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    lines = [
        "# Command-line start-up",
        "",
        f"- date: {record['date']}",
        f"- device: {record['cpu']}, {record['cores']} cores (load average before the run: "
        f"{', '.join(map(str, record['load_average_before']))}; after: {', '.join(map(str, record['load_average_after']))})",
        f"- torch {record['torch']}, Python {record['python']}",
        f"- wall time of a fresh process to exit, median of {args.repeats} runs after one warm-up; `fusionkit --help` "
        f'in {args.repeats} pairs with `python -c "import torch"` (order alternating per pair): '
        f"`import torch` median {torch_median:.3f} s",
        "",
        "| command | median s | x `import torch` |",
        "| --- | ---: | ---: |",
        f'| `python -c "import torch"` | {torch_median:.3f} | 1.00 |',
    ]
    for row in rows:
        lines.append(f"| `{row['command']}` | {row['median_s']:.3f} | {row['ratio_of_medians']:.2f} |")
    lines += [
        "",
        f"Target (issue 21): `fusionkit --help` <= {TARGET}x `import torch`: "
        f"{'met' if met else 'NOT met'} ({help_row['ratio_of_medians']:.2f}x the median; median of the pair "
        f"ratios {help_row['median_pair_ratio']:.2f}).",
        "",
        "None of the `fusionkit` rows imports torch (tests/test_cli_front.py checks it); what is left is the "
        'interpreter, typer and click, pydantic for `presets`/`components`/`schema`, and the `python -c "pass"` '
        "row's bare interpreter start.",
        "",
    ]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))
    print(f"wrote {stem}.json and {stem}.md; target {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
