"""A model you load executes nothing, and reads and writes only inside its folder (issue 28 item 4).

- The package source names no unsafe loader: no pickle (or dill, joblib, shelve, marshal),
  ``torch.load`` only with ``weights_only=True``, ``yaml.load`` only with a ``SafeLoader``, no
  ``eval``/``exec``/``compile``/``__import__``, and every ``importlib.import_module`` call is one
  of a reviewed list whose argument never comes from a file.
- A run directory (``FusionPipeline.from_run``) or a saved pipeline folder
  (``FusionPipeline.from_pretrained``) naming a component kind that is not installed is refused in
  one line naming the kind (and the plugin distribution the folder records), without importing any
  module the file names.
- A symbolic link in a loaded folder that leads outside it is refused in one line; the paths a
  run's config names outside the run (backbone weights file, warm start, split file, cache folder)
  are never read or written when it is loaded and predicts. Every other file a loaded folder's
  content could point to has a fixed name inside the folder (``RunDir``, ``hub.CHECKED_FILES``).

The run directory is written by hand (config, fitted encoder, split, a checkpoint of a seeded tiny
model): nothing is trained, so these tests are fast and in the default lane.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from train_helpers import untrained_run

import fusionkit as fk
from fusionkit.errors import ConfigError, FusionkitError
from fusionkit.inference.hub import read_folder
from fusionkit.model import FusionModel
from fusionkit.runtime.rundir import RunDir

PACKAGE = Path(fk.__file__).resolve().parent

# -- the package source -----------------------------------------------------------------------------
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "runpy"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
REVIEWED_IMPORTS = {
    ("__init__.py", "'fusionkit.specs'"): "a constant: the lazy facade",
    ("__init__.py", "_EXPORTS[name]"): "the facade's own table of fusionkit modules",
    ("errors.py", "module or package"): "require_extra: a key of EXTRAS or a constant module name from code",
    ("registry.py", "self.module"): "a component's module, registered by Python code or an installed entry point",
    ("registry.py", "BUILT_IN_MODULE"): "a constant: fusionkit.components",
    ("registry.py", "module"): "a kind's spec base, from the registry's own SPEC_BASES table (code, not a file)",
    ("data/__init__.py", "_EXPORTS[name]"): "the lazy fusionkit.data facade's own table of its modules",
    ("data/__init__.py", "f'{__name__}.{name}'"): "a submodule of fusionkit.data named by attribute access in code",
}
"""Every ``import_module`` call in the package, by file and argument, with why no file names it.
A new call fails the test until it is reviewed and added here."""


def _call_name(func: ast.expr) -> str:
    """``torch.load`` for ``torch.load(...)``, ``eval`` for ``eval(...)``."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "?")  # "?.eval" for model.cpu().eval()
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


SAFE_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}


def _safe_yaml_loader(tree: ast.Module, loader: ast.expr | None) -> bool:
    """Whether a ``yaml.load`` call's ``Loader=`` is ``yaml.SafeLoader`` or a class of the same file
    derived from it (read from the source: the module is not imported)."""
    if loader is None:
        return False
    name = _call_name(loader)
    if name in SAFE_LOADERS:
        return True
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    seen: set[str] = set()
    while name in classes and name not in seen:
        seen.add(name)
        bases = [_call_name(b) for b in classes[name].bases]
        if any(b in SAFE_LOADERS for b in bases):
            return True
        name = bases[0] if len(bases) == 1 else ""
    return False


def _findings() -> tuple[list[str], set[tuple[str, str]]]:
    problems: list[str] = []
    imports: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in UNSAFE_MODULES:
                        problems.append(f"{where}:{node.lineno}: imports {name}")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node.func)
            line = f"{where}:{node.lineno}: {ast.unparse(node)[:120]}"
            if name in UNSAFE_CALLS:
                problems.append(f"{line} (executes code)")
            elif name == "torch.load":
                value = _keyword(node, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    problems.append(f"{line} (torch.load without weights_only=True)")
            elif name.startswith(("torch.jit.load", "torch.package")) or name in ("yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{line} (loads code)")
            elif name in ("yaml.load", "yaml.load_all") and not _safe_yaml_loader(tree, _keyword(node, "Loader")):
                problems.append(f"{line} (yaml.load without a SafeLoader)")
            elif name.endswith("load") and name.split(".")[0] in ("np", "numpy"):
                value = _keyword(node, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{line} (numpy load with pickles)")
            elif name.split(".")[-1] == "import_module":
                imports.add((str(where), ast.unparse(node.args[0]) if node.args else ""))
    return problems, imports


def test_the_package_source_calls_no_loader_that_executes_code():
    problems, imports = _findings()
    assert problems == [], "unsafe loading in the package:\n" + "\n".join(problems)
    unreviewed = sorted(imports - set(REVIEWED_IMPORTS))
    assert unreviewed == [], f"import_module calls not reviewed (could a file name the module?): {unreviewed}"
    assert imports == set(REVIEWED_IMPORTS), "a reviewed import_module call is gone: update REVIEWED_IMPORTS"


def test_the_source_check_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The grep above is no test that cannot fail: a module with each unsafe call is caught."""
    bad = tmp_path / "fusionkit"
    bad.mkdir()
    (bad / "__init__.py").write_text("")
    (bad / "bad.py").write_text(
        "import pickle\nimport torch\nimport yaml\nimport importlib\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nyaml.load('a', Loader=yaml.Loader)\n"
        "eval('1')\nexec('1')\nimportlib.import_module(open('m').read())\n"
    )
    (bad / "fine.py").write_text(
        "import yaml\nclass L(yaml.SafeLoader): pass\nclass M(L): pass\nyaml.load('a', Loader=M)\n"
        "model.eval()\nre.compile('x')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad)
    problems, imports = _findings()
    text = "\n".join(problems)
    for needle in ("imports pickle", "torch.load without", "yaml.load without", "eval('1')", "exec('1')"):
        assert needle in text
    assert text.count("torch.load without") == 2
    assert imports == {("bad.py", "open('m').read()")}


# -- a run directory and a saved folder, made without training ---------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("loading"))


@pytest.fixture(scope="module")
def saved(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fk.FusionPipeline.from_run(run_dir, device="cpu").save(tmp_path_factory.mktemp("saved") / "model")


def _copy(folder: Path, to: Path) -> Path:
    return Path(shutil.copytree(folder, to / folder.name, symlinks=True))


def _one_line(error: BaseException, *words: str) -> str:
    message = str(error)
    assert "\n" not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.fixture
def trap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module ``fk_trap_module`` on ``sys.path`` that leaves a marker file when imported."""
    marker = tmp_path / "imported"
    (tmp_path / "fk_trap_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fk_trap_module", None)
    return marker


@pytest.mark.parametrize("kind", ["fk_trap_module", "fk_trap_module:Fusion", "fk_trap_module.Fusion"])
def test_a_run_naming_an_uninstalled_kind_is_refused_without_importing_it(run_dir, tmp_path, trap, kind):
    run = _copy(run_dir, tmp_path)
    config = yaml.safe_load(RunDir(run).config.read_text())
    config["model"]["fusion"] = {"kind": kind, "out_dim": 8}
    RunDir(run).config.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_run(run, device="cpu")
    _one_line(info.value, str(RunDir(run).config), "model.fusion", repr(kind))
    assert not trap.exists() and "fk_trap_module" not in sys.modules


def _edit_config(folder: Path, edit: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_a_saved_folder_naming_an_uninstalled_kind_names_the_plugin_distribution(saved, tmp_path, trap):
    folder = _copy(saved, tmp_path)

    def edit(config: dict[str, Any]) -> None:
        config["run_config"]["model"]["fusion"] = {"kind": "fk_trap_module", "out_dim": 8}
        config["components"] = {
            "fusion": {
                "kind": "fk_trap_module",
                "module": "fk_trap_module",
                "distribution": "fusionkit-trap",
                "version": "0.3.1",
            }
        }

    _edit_config(folder, edit)
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_pretrained(folder)
    _one_line(info.value, "model.fusion kind 'fk_trap_module' is not installed", "pip install 'fusionkit-trap==0.3.1'")
    assert not trap.exists() and "fk_trap_module" not in sys.modules

    _edit_config(folder, lambda config: config.pop("components"))
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_pretrained(folder)
    _one_line(info.value, str(folder / "config.json"), "'fk_trap_module'", "install the plugin that provides it")
    assert not trap.exists()


def test_a_saved_folder_records_where_its_components_come_from(saved, clean_plugin_module):
    from fusionkit.inference.hub import component_sources

    config = json.loads((saved / "config.json").read_text())
    assert config["components"] == {}  # every component is fusionkit's own
    import plugin_fixture  # noqa: F401 - registers plugin_mean (not installed: no distribution provides it)

    pipe = fk.FusionPipeline.from_pretrained(saved)
    assert pipe.model.spec is not None and pipe.encoder is not None
    spec = fk.ModelSpec.model_validate(
        {**pipe.model.spec.model_dump(mode="json"), "fusion": {"kind": "plugin_mean", "out_dim": 8}}
    )
    pipe.model = FusionModel(spec, metadata_width=pipe.encoder.metadata_width)
    assert component_sources(pipe) == {
        "fusion": {"kind": "plugin_mean", "module": "plugin_fixture", "distribution": None, "version": None}
    }


# -- paths ----------------------------------------------------------------------------------------------
def test_a_link_leading_out_of_a_run_is_refused_even_to_a_good_checkpoint(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "a")
    best = RunDir(run).checkpoint("best")
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(best, outside)
    best.unlink()
    best.symlink_to(outside)
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_run(run, device="cpu")
    _one_line(info.value, str(best), "leading outside", str(outside))

    best.unlink()
    shutil.copy(outside, best)
    (run / "figures").symlink_to(tmp_path, target_is_directory=True)  # evaluation would write through it
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_run(run, device="cpu")
    _one_line(info.value, str(run / "figures"), "leading outside")

    (run / "figures").unlink()
    (run / "figures").symlink_to(RunDir(run).checkpoints, target_is_directory=True)  # inside: fine
    (run / "config-link.yaml").symlink_to("config.yaml")
    assert fk.FusionPipeline.from_run(run, device="cpu").run_dir == run


def test_a_link_leading_out_of_a_saved_folder_is_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path / "a")
    weights = folder / "model.safetensors"
    outside = tmp_path / "weights.safetensors"
    shutil.move(weights, outside)
    weights.symlink_to(Path("..") / ".." / outside.name)
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_pretrained(folder)
    _one_line(info.value, str(weights), "leading outside")


def test_a_hub_snapshot_may_link_into_its_repository_blobs_only(saved, tmp_path):
    """A Hub cache stores a snapshot's files as links to ../../blobs/<hash>: inside the repository."""
    repo = tmp_path / "models--someone--model"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in sorted(saved.iterdir()):
        blob = repo / "blobs" / path.name
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / path.name)
    assert read_folder(snapshot, boundary=repo)["run_config"] == fk.FusionPipeline.from_pretrained(saved).run_config
    (repo / "blobs" / "config.json").unlink()
    shutil.copy(saved / "config.json", tmp_path / "config.json")
    (repo / "blobs" / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(ConfigError) as info:
        read_folder(snapshot, boundary=repo)
    _one_line(info.value, "leading outside")


def test_paths_a_run_config_names_outside_the_run_are_never_touched_by_loading(run_dir, tmp_path):
    """``weights_file``, ``init_from``, ``split_file`` and ``cache_dir`` may name anything (``../``,
    absolute): loading the run and predicting its data read none of them and write none of them."""
    run = _copy(run_dir, tmp_path / "a")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not weights: reading this would fail")
    config = yaml.safe_load(RunDir(run).config.read_text())
    config["model"]["image_encoder"]["weights_file"] = str(garbage)
    config["train"]["init_from"] = "../../garbage.pth"
    config["data"]["split_file"] = str(garbage)
    config["data"]["cache_dir"] = str(tmp_path / "outside-cache")
    RunDir(run).config.write_text(yaml.safe_dump(config))
    pipe = fk.FusionPipeline.from_run(run, device="cpu")
    data = sorted(pipe.data_root.rglob("*"))
    predictions = pipe.predict_dataset(pipe.dataset(lesion_ids=pipe.split["val"]))
    assert sorted(predictions.lesion_ids) == sorted(pipe.split["val"])
    assert not (tmp_path / "outside-cache").exists()
    assert sorted(pipe.data_root.rglob("*")) == data  # the training folder is read, never written


# -- damaged files in a loaded folder ---------------------------------------------------------------
RUN_FILES = ("config.yaml", "metadata_encoder.json", "split.json", "inference.json", "checkpoints/best.safetensors")
SAVED_FILES = ("config.json", "model.safetensors", "metadata_encoder.json", "preprocessing.json")
DAMAGES = ("empty", "truncated", "garbage", "latin1", "json_list", "json_string", "json_object", "null")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes() if path.is_file() else b'{"decision": {"rule": "argmax"}}'  # no inference.json yet
    path.unlink(missing_ok=True)
    path.write_bytes(
        {
            "empty": b"",
            "truncated": data[: len(data) // 2],
            "garbage": bytes(range(256)) * 4,
            "latin1": b'{"r\xe9sum\xe9": 1}',
            "json_list": b"[1, 2, 3]",
            "json_string": b'"text"',
            "json_object": b'{"unexpected": {"deeply": [1, {"x": null}]}}',
            "null": b"null",
        }[how]
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", RUN_FILES)
def test_every_damaged_file_of_a_run_is_refused_in_one_line_naming_it(run_dir, tmp_path, name, how):
    """A run directory is untrusted input too: each of its files, damaged each way, is refused in one
    line naming it. (Not caught: ``config.yaml`` cut at a line end is still a valid, shorter config;
    a run directory has no checksums.)"""
    run = _copy(run_dir, tmp_path)
    _damage(run / name, how)
    if (name, how) == ("config.yaml", "truncated"):
        return
    with pytest.raises(FusionkitError) as info:
        fk.FusionPipeline.from_run(run, device="cpu")
    _one_line(info.value, str(run / name))


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", SAVED_FILES)
def test_every_damaged_file_of_a_saved_folder_is_refused_in_one_line_naming_it(saved, tmp_path, name, how):
    folder = _copy(saved, tmp_path)
    _damage(folder / name, how)
    with pytest.raises(FusionkitError) as info:
        fk.FusionPipeline.from_pretrained(folder)
    _one_line(info.value, str(folder / name))


@pytest.mark.parametrize(
    ("name", "how"), [("split.json", "truncated"), ("split.json", "json_list"), ("metadata_encoder.json", "latin1")]
)
def test_damaged_run_files_that_raised_a_traceback_are_one_line(run_dir, tmp_path, name, how):
    """Found by damaging every file of a run: split.json that is not JSON, or not an object, and a
    metadata encoder that is not UTF-8 raised JSONDecodeError / UnicodeDecodeError or were taken."""
    run = _copy(run_dir, tmp_path)
    _damage(run / name, how)
    with pytest.raises(FusionkitError) as info:
        fk.FusionPipeline.from_run(run, device="cpu")
    _one_line(info.value, str(run / name))
