"""``Tracker``'s calls into its backends, pinned with recording stand-ins for TensorBoard's
``SummaryWriter`` and the ``mlflow`` module (mlflow is an optional extra, not installed for the
tests); ``test_train_options.py`` checks the real TensorBoard event files."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fusionkit.errors import ConfigError
from fusionkit.train.tracking import Tracker


class Recorder:
    """Records every method call as ``(name, args, kwargs)`` in a shared list."""

    def __init__(self, calls: list[tuple[str, tuple, dict]], prefix: str) -> None:
        self._calls, self._prefix = calls, prefix

    def __getattr__(self, name: str) -> Any:
        def method(*args: Any, **kwargs: Any) -> None:
            self._calls.append((f"{self._prefix}.{name}", args, kwargs))

        return method


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple, dict]]:
    """Both backends replaced by recorders; the list of their calls in order."""
    record: list[tuple[str, tuple, dict]] = []

    def summary_writer(*args: Any, **kwargs: Any) -> Recorder:
        record.append(("SummaryWriter", args, kwargs))
        return Recorder(record, "tb")

    import torch.utils.tensorboard

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", summary_writer)
    mlflow = types.ModuleType("mlflow")
    recorder = Recorder(record, "mlflow")
    for name in ("start_run", "log_params", "log_metrics", "log_artifact", "end_run"):
        setattr(mlflow, name, getattr(recorder, name))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    return record


def test_each_backend_is_opened_for_the_run(tmp_path: Path, calls: list) -> None:
    run = tmp_path / "run-7"
    tracker = Tracker(backends=["tensorboard", "mlflow"], run_dir=str(run), params={"train.lr": 0.1})
    assert tracker.active and tracker.backends == ("tensorboard", "mlflow") and tracker.run_dir == run
    assert calls == [
        ("SummaryWriter", (), {"log_dir": str(run / "tensorboard")}),
        ("mlflow.start_run", (), {"run_name": "run-7"}),
        ("mlflow.log_params", ({"train.lr": 0.1},), {}),
    ]
    assert type(calls[2][1][0]) is dict
    calls.clear()
    Tracker(backends=("mlflow",), run_dir=run)
    Tracker(backends=("mlflow",), run_dir=run, params={})
    assert calls == [("mlflow.start_run", (), {"run_name": "run-7"})] * 2


def test_scalars_go_to_each_backend_as_floats(tmp_path: Path, calls: list) -> None:
    tracker = Tracker(backends=("tensorboard", "mlflow"), run_dir=tmp_path)
    calls.clear()
    tracker.log_scalars({"train/loss": np.float32(1.5), "val/dice": 1}, step=3)
    assert calls == [
        ("tb.add_scalar", ("train/loss", 1.5, 3), {}),
        ("tb.add_scalar", ("val/dice", 1.0, 3), {}),
        ("tb.flush", (), {}),
        ("mlflow.log_metrics", ({"train.loss": 1.5, "val.dice": 1.0},), {"step": 3}),
    ]
    assert {type(c[1][1]) for c in calls[:2]} == {float}
    assert {type(v) for v in calls[3][1][0].values()} == {float}


def test_figures_go_to_tensorboard_as_rgb_images_and_to_mlflow_as_artifacts(tmp_path: Path, calls: list) -> None:
    gray = tmp_path / "roc.png"
    Image.new("L", (3, 2), 200).save(gray)
    rgba = tmp_path / "pr.png"
    Image.new("RGBA", (2, 4), (10, 20, 30, 40)).save(rgba)
    tracker = Tracker(backends=("tensorboard", "mlflow"), run_dir=tmp_path)
    calls.clear()
    tracker.log_figures([gray, str(rgba)], step=5)
    assert [(c[0], c[1][0], c[1][2], c[2]) for c in calls[:2]] == [
        ("tb.add_image", "report/roc", 5, {"dataformats": "HWC"}),
        ("tb.add_image", "report/pr", 5, {"dataformats": "HWC"}),
    ]
    np.testing.assert_array_equal(calls[0][1][1], np.full((2, 3, 3), 200, dtype=np.uint8))
    np.testing.assert_array_equal(calls[1][1][1], np.broadcast_to(np.array([10, 20, 30], np.uint8), (4, 2, 3)))
    assert calls[2:] == [
        ("tb.flush", (), {}),
        ("mlflow.log_artifact", (str(gray),), {"artifact_path": "figures"}),
        ("mlflow.log_artifact", (str(rgba),), {"artifact_path": "figures"}),
    ]
    calls.clear()
    tracker.log_figures([gray])
    assert calls[0][1][2] == 0  # the default step


def test_close_closes_each_backend_once(tmp_path: Path, calls: list) -> None:
    tracker = Tracker(backends=("tensorboard", "mlflow"), run_dir=tmp_path)
    calls.clear()
    tracker.close()
    tracker.close()
    tracker.log_scalars({"a": 1.0}, step=0)
    tracker.log_figures([])
    assert calls == [("tb.close", (), {}), ("mlflow.end_run", (), {})]


def test_no_backend_calls_nothing(tmp_path: Path, calls: list) -> None:
    tracker = Tracker(backends=iter(()), run_dir=tmp_path)
    assert not tracker.active and tracker.backends == ()
    tracker.log_scalars({"a": 1.0}, step=0)
    tracker.log_figures([tmp_path / "absent.png"])
    tracker.close()
    assert calls == []


def test_a_missing_backend_package_is_named_with_its_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(ConfigError) as exc:
        Tracker(backends=("mlflow",), run_dir=tmp_path)
    assert str(exc.value) == "train.tracking: mlflow needs the mlflow extra: pip install 'jiadf-fusion[mlflow]'"
    assert isinstance(exc.value.__cause__, ImportError)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError) as exc:
        Tracker(backends=("tensorboard",), run_dir=tmp_path)
    assert str(exc.value) == (
        "train.tracking: tensorboard needs the tracking extra: pip install 'jiadf-fusion[tracking]'"
    )
    assert isinstance(exc.value.__cause__, ImportError)
