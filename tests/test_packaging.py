"""The built wheel: its distribution name is ``jiadf-fusion``, and ``fusionkit`` imports from it.

``fusionkit`` on PyPI is an unrelated project, so the distribution must never be named that. The
wheel stands alone: it carries the licence, the presets and the quick-start config, and a user who
has only the wheel (in a fresh venv, outside any checkout) can follow the getting-started commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST_NAME = "jiadf-fusion"
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")
"""What the build reads besides the package: the metadata, the long description, the licence."""


def build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the source (building writes into its tree); returns its path."""
    source = tmp_path / "src"
    source.mkdir(parents=True)
    for name in SOURCE_FILES:
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
    return wheel


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_metadata_names_the_distribution_and_the_package_imports_from_it(tmp_path):
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith("jiadf_fusion-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = HeaderParser().parsestr(zf.read(meta).decode())
        (eps,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = zf.read(eps).decode()
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        licence_text = zf.read(licence).decode()
        template = zf.read("fusionkit/templates/quickstart.yaml").decode()
        zf.extractall(tmp_path / "installed")
    assert metadata["Name"] == DIST_NAME
    assert "fusionkit = fusionkit.cli:main" in entry_points  # the console script keeps its name
    assert "fusionkit/presets/ji-adf.yaml" in names and "fusionkit/py.typed" in names
    # the licence the metadata names, in full, and the starter config `fusionkit init` writes
    assert metadata["License-Expression"] == "Apache-2.0"
    assert licence_text == (REPO / "LICENSE").read_text()
    assert "Apache License" in licence_text and "END OF TERMS AND CONDITIONS" in licence_text
    assert template == (REPO / "examples" / "quickstart.yaml").read_text()
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL", []))
    assert "Documentation" in urls

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


@pytest.mark.slow
def test_a_user_with_only_the_wheel_can_get_started(tmp_path):
    """The built wheel in a fresh venv outside the checkout: --version, init, and the quick-start run.

    The venv sees this interpreter's site-packages (torch, timm, ...) through a ``.pth`` file,
    after its own, so nothing is downloaded; fusionkit itself comes from the wheel alone.
    """
    wheel = build_wheel(tmp_path / "build")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    own = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (own / "deps-from-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", FUSIONKIT_CACHE=str(tmp_path / "cache"))
    script = venv / "bin" / "fusionkit"

    def run(*args: str | Path, timeout: int = 120) -> str:
        proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
        return proc.stdout

    where = run(python, "-c", "import fusionkit; print(fusionkit.__file__)").strip()
    assert Path(where).is_relative_to(venv) and not Path(where).is_relative_to(REPO)
    import fusionkit

    assert run(script, "--version").strip() == f"fusionkit {fusionkit.__version__}"
    run(script, "init")
    assert (work / "quickstart.yaml").read_text() == (REPO / "examples" / "quickstart.yaml").read_text()
    run(script, "train", "quickstart.yaml", "--synthetic", "--out", "runs/q", timeout=900)
    assert (work / "runs" / "q" / "report.md").is_file()
