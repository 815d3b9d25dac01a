"""Bad input through the real entry point (issue 28 items 3 and 4): ``python -m fusionkit.cli``
in a child process exits non-zero with one line on stderr and no traceback, for a bad data folder,
a bad config file, a decompression-bomb image and a run naming a component kind not installed.
(The same inputs are fuzzed in process in tests/test_fuzz_data.py and tests/test_fuzz_config.py.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_fixtures import edit_csv
from train_helpers import tiny_run_config, untrained_run, write_config

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def _fusionkit(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("fusionkit: error: ")
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("cli-bad"))


def test_a_bad_metadata_row_stops_train_with_one_line(run: Path, tmp_path: Path) -> None:
    data = run.parent / "data"
    bad = tmp_path / "data"
    shutil.copytree(data, bad)
    metadata = bad / "MILK10k_Training_Metadata.csv"
    rows = edit_csv(metadata, lambda rows: rows[3].__setitem__(7, "Male"))
    config = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path / "cache", epochs=1))
    result = _fusionkit("train", str(config), "--data", str(bad), "--out", str(tmp_path / "run"))
    _refused(result, str(metadata), "line 4", f"lesion {rows[3][0]}", "'sex'")
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_utf8_stops_train_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"# r\xe9sum\xe9\n" + yaml.safe_dump(tiny_run_config(tmp_path / "cache")).encode())
    _refused(_fusionkit("train", str(config), "--synthetic", "--out", str(tmp_path / "run")), str(config), "UTF-8")


def test_a_decompression_bomb_stops_predict_with_one_line(run: Path, tmp_path: Path) -> None:
    bad = Path(shutil.copytree(run.parent / "data", tmp_path / "data"))
    image = sorted((bad / "MILK10k_Training_Input").rglob("*.jpg"))[0]
    data = bytearray(image.read_bytes())
    at = data.find(b"\xff\xc0")
    data[at + 5 : at + 9] = (20_000).to_bytes(2, "big") * 2  # the header claims 20000 x 20000
    image.write_bytes(bytes(data))
    out = tmp_path / "out.csv"
    result = _fusionkit("predict", str(run), "--data", str(bad), "--split", "Training", "--out", str(out))
    _refused(result, str(image), "pixels")
    assert not out.exists()


def test_a_run_naming_an_uninstalled_kind_stops_predict_with_one_line(run: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["model"]["fusion"] = {"kind": "my_plugin.fusion:Gated", "out_dim": 8}
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out.csv"
    result = _fusionkit(
        "predict", str(copy), "--data", str(run.parent / "data"), "--split", "Training", "--out", str(out)
    )
    _refused(result, str(copy / "config.yaml"), "model.fusion", "'my_plugin.fusion:Gated'")
    assert not out.exists()
