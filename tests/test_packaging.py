"""The built wheel: its distribution name is ``jiadf-fusion``, and ``fusionkit`` imports from it.

``fusionkit`` on PyPI is an unrelated project, so the distribution must never be named that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "jiadf-fusion"


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_metadata_names_the_distribution_and_the_package_imports_from_it(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "fusionkit", source / "fusionkit", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("jiadf_fusion-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = dict(line.split(": ", 1) for line in zf.read(meta).decode().splitlines() if ": " in line)
        (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(eps).decode()
        zf.extractall(tmp_path / "installed")
    assert headers["Name"] == DIST_NAME
    assert "fusionkit = fusionkit.cli:main" in entry_points  # the console script keeps its name
    assert "fusionkit/presets/ji-adf.yaml" in names and "fusionkit/py.typed" in names

    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed"), "OMP_NUM_THREADS": "1"}
    code = "import fusionkit as fk; print(fk.__file__); print(len(fk.list_presets()))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    path, n_presets = out.stdout.split()
    assert Path(path).is_relative_to(tmp_path / "installed")
    assert int(n_presets) == len(list((REPO / "fusionkit" / "presets").glob("*.yaml")))


def test_no_documented_command_installs_the_unrelated_fusionkit_project():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "examples").rglob("*.md"))]
    tomls = sorted((REPO / "examples").rglob("pyproject.toml"))
    bad = re.compile(
        r"pip\s+(install|download)\s+(-\S+\s+)*['\"]?fusionkit(?![-_\w./])|\"fusionkit(\[[^\]]*\])?\s*([<>=!~][^\"]*)?\""
    )
    offenders = []
    for path in pages:
        for block in re.findall(r"```.*?\n(.*?)```", path.read_text(), flags=re.S):
            offenders += [
                f"{path.relative_to(REPO)}: {line.strip()}" for line in block.splitlines() if bad.search(line)
            ]
    for path in tomls:
        offenders += [
            f"{path.relative_to(REPO)}: {line.strip()}"
            for line in path.read_text().splitlines()
            if line.strip().startswith("dependencies") and bad.search(line.split("#")[0])
        ]
    # an extra is always installed by the distribution name, in prose and in the package's own hints too
    for path in [*pages, *sorted((REPO / "fusionkit").rglob("*.py"))]:
        offenders += [
            f"{path.relative_to(REPO)}: {line.strip()}"
            for line in path.read_text().splitlines()
            if re.search(r"(?<![-\w])fusionkit\[", line)
        ]
    assert not offenders, "\n".join(offenders)
    assert bad.search("pip install fusionkit") and bad.search('dependencies = ["fusionkit>=0.1"]')
    assert not bad.search("pip install ./examples/plugin-gated-sum") and not bad.search("pip install jiadf-fusion")
