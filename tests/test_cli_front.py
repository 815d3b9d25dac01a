"""The command line's front door, through the real ``fusionkit`` entry point in a subprocess.

- Help, ``--version``, ``presets``, ``components`` and ``schema`` start without importing torch, and
  ``import fusionkit`` imports neither torch nor the plugins (they load when a registry is asked).
- ``-h`` is ``--help`` on every command; ``fusionkit init`` writes the shipped quick-start config.
- A missing optional dependency is one line naming its extra, exit status 2, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from train_helpers import tiny_run_config, write_config

REPO = Path(__file__).resolve().parents[1]

RUNNER = """\
import sys
from importlib.metadata import entry_points

blocked, *args = sys.argv[1:]
for name in filter(None, blocked.split(",")):
    sys.modules[name] = None  # `import name` now raises ImportError, as if it were not installed
sys.argv = ["fusionkit", *args]
(script,) = entry_points(group="console_scripts", name="fusionkit")  # the installed console script
try:
    script.load()()
finally:
    print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH", file=sys.stderr)
"""
"""Runs ``fusionkit ARGS`` as the console script does, with some modules made unimportable, and
reports on stderr whether torch was imported."""


def run_fusionkit(tmp_path: Path, *args: str, block: tuple[str, ...] = (), cwd: Path | None = None):
    """Run the ``fusionkit`` entry point in a fresh interpreter; returns the completed process."""
    runner = tmp_path / "run_fusionkit.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(runner), ",".join(block), *args],
        cwd=cwd or tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _torch_imported(proc: subprocess.CompletedProcess) -> bool:
    marker = proc.stderr.strip().splitlines()[-1]
    assert marker in ("TORCH_IMPORTED", "NO_TORCH"), proc.stderr
    return marker == "TORCH_IMPORTED"


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The error output without the runner's marker: must be exactly one line."""
    lines = [line for line in proc.stderr.splitlines() if line not in ("TORCH_IMPORTED", "NO_TORCH")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- start-up without torch --------------------------------------------------------------------------
LIGHT_COMMANDS = [
    ("--help",),
    ("-h",),
    ("--version",),
    ("train", "--help"),
    ("predict", "-h"),
    ("export", "--help"),
    ("sweep", "--help"),
    ("presets",),
    ("presets", "ji-*"),
    ("components",),
    ("components", "fusion"),
    ("schema",),
]


@pytest.mark.parametrize("args", LIGHT_COMMANDS, ids=" ".join)
def test_help_listing_and_schema_do_not_import_torch(tmp_path, args):
    proc = run_fusionkit(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert not _torch_imported(proc), f"fusionkit {' '.join(args)} imported torch"


def test_the_light_commands_print_what_the_library_says(tmp_path):
    code = (
        "import json, fusionkit as fk\n"
        "print(json.dumps({'schema': fk.spec_json_schema(), 'components': fk.list_components(),"
        " 'presets': fk.list_presets()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lib = json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout)
    assert json.loads(run_fusionkit(tmp_path, "schema").stdout) == lib["schema"]
    listed = run_fusionkit(tmp_path, "components").stdout.splitlines()
    assert listed == [f"{kind}: {', '.join(names)}" for kind, names in lib["components"].items()]
    presets = [line.split()[0] for line in run_fusionkit(tmp_path, "presets").stdout.splitlines()]
    assert presets == lib["presets"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_import_fusionkit_loads_neither_torch_nor_plugins_and_keeps_its_names(tmp_path):
    code = (
        "import sys, fusionkit as fk\n"
        "print(sorted(m for m in ('torch', 'timm', 'fusionkit.components', 'fusionkit.model') if m in sys.modules))\n"
        "print(fk.__version__)\n"
        "print(sorted(fk.__all__))\n"
        "print(all(n in dir(fk) for n in fk.__all__))\n"
        "print(fk.registry.__module__, fk.specs.__name__, fk.build_model.__module__)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded, version, names, listed, where, torch_after = proc.stdout.splitlines()
    assert loaded == "[]"  # no torch, no components (so no plugins) on import
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'version = "{version}"' in pyproject
    assert names == str(sorted(PUBLIC_NAMES))
    assert listed == "True"
    assert where == "fusionkit.registry fusionkit.specs fusionkit.model"  # fk.registry: the function
    assert torch_after == "True"  # fk.build_model imported the model, and torch with it


PUBLIC_NAMES = {
    "COMPONENT_KINDS",
    "ConfigError",
    "DataError",
    "FusionModel",
    "FusionOutput",
    "FusionPipeline",
    "FusionkitError",
    "JointIndividualLoss",
    "LossBreakdown",
    "MissingModalityError",
    "ModelSpec",
    "PluginWarning",
    "PretrainedWeightsError",
    "build_model",
    "dump_spec",
    "list_components",
    "list_presets",
    "load_plugins",
    "load_preset",
    "load_spec",
    "register",
    "registry",
    "specs",
    "spec_json_schema",
}
"""``fusionkit.__all__`` before it became a lazy module, and ``FusionPipeline`` since: the same names, no more, no fewer."""


@pytest.mark.slow
@pytest.mark.subprocess
def test_every_public_name_resolves_and_star_import_works(tmp_path):
    code = "from fusionkit import *\nimport fusionkit as fk\nprint(all(getattr(fk, n) is not None for n in fk.__all__))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr


# -- -h, --version ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.subprocess
def test_version_and_short_help(tmp_path):
    import fusionkit

    version = run_fusionkit(tmp_path, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"fusionkit {fusionkit.__version__}"
    for command in ("", "train", "init", "sweep"):  # -h comes from the app's context, which each command inherits
        short = run_fusionkit(tmp_path, *command.split(), "-h")
        long = run_fusionkit(tmp_path, *command.split(), "--help")
        assert short.returncode == 0 and short.stdout == long.stdout and "Usage: fusionkit" in short.stdout, command


# -- init -----------------------------------------------------------------------------------------------
def test_shipped_quickstart_is_the_example():
    shipped = REPO / "fusionkit" / "templates" / "quickstart.yaml"
    assert shipped.read_text() == (REPO / "examples" / "quickstart.yaml").read_text()


def test_init_writes_the_quickstart_and_refuses_to_overwrite(tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    proc = run_fusionkit(tmp_path, "init", cwd=work)
    assert proc.returncode == 0, proc.stderr
    written = work / "quickstart.yaml"
    assert written.read_text() == (REPO / "examples" / "quickstart.yaml").read_text()
    assert "fusionkit train quickstart.yaml --synthetic" in proc.stdout
    assert not _torch_imported(proc)

    written.write_text("# mine\n")
    again = run_fusionkit(tmp_path, "init", cwd=work)
    assert again.returncode == 2
    assert _error_line(again) == "fusionkit: error: quickstart.yaml exists; pass --force to overwrite it"
    assert written.read_text() == "# mine\n"

    forced = run_fusionkit(tmp_path, "init", "--force", cwd=work)
    assert forced.returncode == 0 and written.read_text() == (REPO / "examples" / "quickstart.yaml").read_text()

    into = run_fusionkit(tmp_path, "init", "mine.yaml", cwd=work)
    assert into.returncode == 0 and (work / "mine.yaml").is_file()  # a new path is the file itself
    (work / "folder").mkdir()
    assert run_fusionkit(tmp_path, "init", "folder", cwd=work).returncode == 0
    assert (work / "folder" / "quickstart.yaml").is_file()  # a folder gets quickstart.yaml inside


# -- optional dependencies --------------------------------------------------------------------------------
def test_export_without_onnx_names_the_export_extra(tmp_path):
    proc = run_fusionkit(tmp_path, "export", str(tmp_path / "some-run"), block=("onnx",))
    assert proc.returncode == 2
    assert (
        _error_line(proc) == "fusionkit: error: ONNX export needs the export extra: pip install 'jiadf-fusion[export]'"
    )


@pytest.mark.parametrize(
    ("backend", "extra"),
    [("tensorboard", "tracking"), ("mlflow", "mlflow")],
)
@pytest.mark.slow
@pytest.mark.subprocess
def test_tracking_without_its_package_names_the_extra(tmp_path, backend, extra):
    config = write_config(tmp_path / "tiny.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=24))
    proc = run_fusionkit(
        tmp_path,
        "train",
        str(config),
        "--synthetic",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
        "--set",
        f"train.tracking=[{backend}]",
        block=(backend,),
    )
    assert proc.returncode == 2
    message = f"train.tracking: {backend} needs the {extra} extra: pip install 'jiadf-fusion[{extra}]'"
    assert _error_line(proc) == f"fusionkit: error: {message}"


@pytest.mark.slow
@pytest.mark.subprocess
def test_submitit_launcher_without_submitit_names_the_cluster_extra(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=24))
    out = tmp_path / "sweep"
    proc = run_fusionkit(
        tmp_path,
        "sweep",
        str(config),
        "--presets",
        "ji-adf",
        "--seeds",
        "0",
        "--synthetic",
        "--launcher",
        "submitit",
        "--out",
        str(out),
        block=("submitit",),
    )
    assert proc.returncode == 2
    message = "--launcher submitit needs the cluster extra: pip install 'jiadf-fusion[cluster]'"
    assert _error_line(proc) == f"fusionkit: error: {message}"
    assert not (out / "synthetic").exists()  # refused before any data was generated


def test_every_optional_dependency_has_an_extra_in_pyproject():
    from fusionkit.errors import EXTRAS

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for package, extra in EXTRAS.items():
        assert any(req.split(">")[0].split("=")[0].strip() == package for req in declared[extra]), (package, extra)
