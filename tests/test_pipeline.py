"""FusionPipeline: a trained model that carries its preprocessing, metadata encoder and decision rule.

One tiny run is trained once (in process, synthetic data); everything else loads it: from the run
directory, from a saved folder, in a fresh interpreter that imports only fusionkit, and through the
``fusionkit predict`` entry point from a copy of the run whose training folder is gone.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from train_helpers import tiny_run_config, train_carried_run

import fusionkit as fk
from fusionkit.data import CLASS_NAMES, make_synthetic_milk10k
from fusionkit.errors import ConfigError, DataError
from fusionkit.inference.decision import MIN_POSITIVES, DecisionRecord, average_decisions, fit_decision
from fusionkit.inference.ensemble import load_runs
from fusionkit.runtime.config import RunConfig
from fusionkit.runtime.predict import check_model_batch, predict

pytestmark = pytest.mark.trains  # asserts on what trained (or stepped) models compute

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    config = tiny_run_config(root / "cache", epochs=1, n_lesions=40)
    train_carried_run(config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def pipe(run_dir: Path) -> fk.FusionPipeline:
    return fk.FusionPipeline.from_run(run_dir, device="cpu")


@pytest.fixture(scope="module")
def saved(pipe: fk.FusionPipeline, tmp_path_factory) -> Path:
    return pipe.save(tmp_path_factory.mktemp("saved") / "model")


def _lesion(run_dir: Path, index: int = 0) -> tuple[str, list[dict[str, str]], dict[str, Path]]:
    """A lesion of the run's data: its id, its metadata CSV rows and its two JPEG paths."""
    data = run_dir / "synthetic"
    with (data / "MILK10k_Training_Metadata.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    lesion = sorted({r["lesion_id"] for r in rows})[index]
    mine = [r for r in rows if r["lesion_id"] == lesion]
    images = {r["image_type"]: next((data / "MILK10k_Training_Input").rglob(f"{r['isic_id']}.jpg")) for r in mine}
    return lesion, mine, {"derm": images["dermoscopic"], "clinical": images["clinical: close-up"]}


def _flat(rows: list[dict[str, str]]) -> dict[str, str]:
    """The one-dict metadata form: lesion-level columns, per-image ones prefixed derm./clinical."""
    flat: dict[str, str] = {}
    for row in rows:
        prefix = "derm" if row["image_type"] == "dermoscopic" else "clinical"
        for key, value in row.items():
            if key in ("age_approx", "sex", "skin_tone_class", "site"):
                flat[key] = value
            elif key.startswith("MONET_") or key == "image_manipulation":
                flat[f"{prefix}.{key}"] = value
    return flat


def test_training_stores_the_decision_rule_validation_metrics_and_population(run_dir: Path) -> None:
    stored = json.loads((run_dir / "inference.json").read_text())
    record = DecisionRecord.from_dict(stored["decision"])
    assert record.rule == "thresholds" and record.class_names == CLASS_NAMES
    split = json.loads((run_dir / "split.json").read_text())
    assert record.lesions == len(split["val"]) and sum(record.positives) == len(split["val"])
    for threshold, fitted, positives in zip(record.thresholds, record.fitted, record.positives, strict=True):
        assert fitted == (positives >= MIN_POSITIVES)
        if not fitted:
            assert threshold == 0.5
    assert stored["validation"]["lesions"] == len(split["val"])
    assert set(stored["validation"]["per_class"]) == set(CLASS_NAMES)
    assert stored["population"]["lesions"] == len(split["train"])
    assert sum(stored["population"]["skin_tone"].values()) == len(split["train"])


def test_predict_one_lesion_equals_the_split_prediction(pipe: fk.FusionPipeline, run_dir: Path) -> None:
    lesion, rows, images = _lesion(run_dir)
    result = pipe.predict(derm=images["derm"], clinical=images["clinical"], metadata=rows)
    preds = pipe.predict_split(run_dir / "synthetic", "Training")
    i = preds.lesion_ids.index(lesion)
    assert result.lesion_id == lesion and result.missing == [] and result.imputed == []
    np.testing.assert_allclose([result.probs[c] for c in CLASS_NAMES], preds.probs[i], atol=1e-6)
    assert sum(result.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(result.weights) == {"alpha_I", "alpha_IM", "alpha_M"}
    np.testing.assert_allclose(list(result.weights.values()), preds.weights[i], atol=1e-6)
    values = pipe.decision.apply(preds.probs[i : i + 1])[0]
    assert result.classes == [c for c, v in zip(CLASS_NAMES, values, strict=True) if v > 0.5]


def test_every_image_and_metadata_form_gives_the_same_prediction(pipe: fk.FusionPipeline, run_dir: Path) -> None:
    _, rows, images = _lesion(run_dir, 1)
    reference = pipe.predict(derm=images["derm"], clinical=images["clinical"], metadata=rows)
    arrays = {m: np.array(Image.open(p).convert("RGB")) for m, p in images.items()}
    forms = [
        {m: Image.open(p) for m, p in images.items()},
        arrays,
        {m: torch.from_numpy(a).permute(2, 0, 1) for m, a in arrays.items()},
        {m: torch.from_numpy(a).permute(2, 0, 1).float() / 255 for m, a in arrays.items()},
    ]
    for form in forms:
        got = pipe.predict(**form, metadata=_flat(rows))
        np.testing.assert_allclose(list(got.probs.values()), list(reference.probs.values()), atol=1e-6)
    batch = pipe.predict_batch([{"derm": images["derm"], "clinical": images["clinical"], "metadata": rows}] * 2)
    assert [b.probs for b in batch] == [batch[0].probs] * 2


def test_a_photo_not_given_is_a_missing_modality(pipe: fk.FusionPipeline, run_dir: Path) -> None:
    _, rows, images = _lesion(run_dir)
    full = pipe.predict(derm=images["derm"], clinical=images["clinical"], metadata=rows)
    without = pipe.predict(derm=images["derm"], metadata=rows)
    masked = pipe.predict(derm=images["derm"], clinical=images["clinical"], metadata=rows, absent=("clinical",))
    assert without.missing == ["clinical"] and masked.missing == ["clinical"]
    assert without.probs == pytest.approx(masked.probs, abs=1e-6)
    assert without.probs != pytest.approx(full.probs, abs=1e-6)
    no_meta = pipe.predict(derm=images["derm"], clinical=images["clinical"], absent=("meta",))
    assert no_meta.missing == ["meta"] and no_meta.weights["alpha_M"] == 0.0


def test_inputs_are_checked_at_the_door(pipe: fk.FusionPipeline, run_dir: Path) -> None:
    _, rows, images = _lesion(run_dir)
    hwc = torch.zeros(32, 32, 3, dtype=torch.uint8)
    cases = [
        (dict(metadata=rows), "neither photo given"),
        (dict(derm=hwc, metadata=rows), "derm: a tensor of shape (32, 32, 3); expected (3, H, W)"),
        (dict(derm=np.zeros((8, 8, 3), np.float32), metadata=rows), "derm: a numpy array"),
        (dict(derm=images["derm"], metadata=None), "metadata: none given"),
        (dict(derm=images["derm"], metadata={"sex": "male"}), "metadata lacks age_approx, site, skin_tone_class"),
        (dict(derm=images["derm"], metadata={**_flat(rows), "sex": "x"}), "sex is 'x'"),
        (dict(derm=42, metadata=rows), "derm: got a int"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DataError) as info:
            pipe.predict(**kwargs)
        assert message in str(info.value) and "\n" not in str(info.value), (kwargs.keys(), str(info.value))
    batch = {"derm": torch.zeros(2, 3, 32, 32), "clinical": Image.new("RGB", (32, 32)), "meta": torch.zeros(2, 35)}
    with pytest.raises(DataError, match=r"batch\['clinical'\]: got a Image; expected a torch.Tensor"):
        check_model_batch(batch, modalities=pipe.modalities, metadata_width=35)
    batch["clinical"] = torch.zeros(2, 32, 32, 3)
    with pytest.raises(DataError, match=r"shape \(2, 32, 32, 3\); expected \(B, 3, H, W\) \(channels last"):
        check_model_batch(batch, modalities=pipe.modalities, metadata_width=35)
    batch["clinical"] = torch.zeros(2, 3, 32, 32)
    batch["meta"] = torch.zeros(2, 30)
    with pytest.raises(DataError, match=r"batch\['meta'\]: shape \(2, 30\); expected \(B, 35\)"):
        check_model_batch(batch, modalities=pipe.modalities, metadata_width=35)
    with pytest.raises(DataError, match=r"batch\['meta'\]: shape \(2, 30\); expected \(B, 35\)"):
        predict(pipe.model, [{**batch, "lesion_id": ["a", "b"]}], device=torch.device("cpu"))  # the loop checks too


def test_missing_metadata_fields_are_imputed_only_when_asked(pipe: fk.FusionPipeline, run_dir: Path) -> None:
    _, rows, images = _lesion(run_dir)
    flat = {k: v for k, v in _flat(rows).items() if k != "age_approx" and not k.startswith("clinical.")}
    with pytest.raises(DataError, match="metadata lacks age_approx, derm.MONET"):
        pipe.predict(derm=images["derm"], metadata={k: v for k, v in flat.items() if not k.startswith("derm.")})
    result = pipe.predict(derm=images["derm"], metadata=flat, impute=True)
    assert result.imputed == ["age_approx"]
    # the age imputed as the training mean encodes as 0 with the blank flag off: what a blank age is not
    blank = pipe.predict(derm=images["derm"], metadata={**flat, "age_approx": ""})
    assert blank.imputed == [] and blank.probs != pytest.approx(result.probs, abs=1e-7)


def test_save_then_from_pretrained_round_trips_bit_exactly(pipe: fk.FusionPipeline, saved: Path, run_dir: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md",
        "config.json",
        "metadata_encoder.json",
        "model.safetensors",
        "preprocessing.json",
    ]
    loaded = fk.FusionPipeline.from_pretrained(saved, device="cpu")
    for key, value in pipe.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    a = pipe.predict_split(run_dir / "synthetic", "Training", tta="flips")
    b = loaded.predict_split(run_dir / "synthetic", "Training", tta="flips")
    assert np.array_equal(a.probs, b.probs) and np.array_equal(a.weights, b.weights)
    assert loaded.decision == pipe.decision and loaded.preprocessing == pipe.preprocessing
    assert loaded.encoder.to_dict() == pipe.encoder.to_dict()
    assert loaded.origin == saved and [p.origin for p in load_runs([saved])] == [saved]
    again = loaded.save(saved.parent / "again")
    assert (again / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    preprocessing = json.loads((saved / "preprocessing.json").read_text())["image"]
    assert set(preprocessing) == {"input_size", "mean", "std", "interpolation"} and preprocessing["input_size"] == 32


def test_model_card_has_hub_front_matter_and_says_what_users_must_know(saved: Path) -> None:
    text = (saved / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "fusionkit" and "fusionkit" in front["tags"]
    assert front["license"] == "other" and "dice" in front["metrics"]
    assert front["model-index"][0]["results"][0]["metrics"][0]["type"] == "dice"
    for needed in (
        "not a medical device",
        "Research use only",
        "CC-BY-NC",
        "## Validation metrics",
        "| **macro** |",
        "Skin tone",
        "Site:",
        "age_approx",
        "derm.MONET_hair",
        "FusionPipeline.from_pretrained",
    ):
        assert needed in text, needed


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        ("delete model.safetensors", "model.safetensors: missing"),
        ("delete config.json", "config.json: missing"),
        ("delete metadata_encoder.json", "metadata_encoder.json: missing"),
        ("truncate model.safetensors", "model.safetensors: its SHA-256 differs"),
        ("flip model.safetensors", "model.safetensors: its SHA-256 differs"),
        ("garble config.json", "config.json: not readable JSON"),
        ("garble preprocessing.json", "preprocessing.json: its SHA-256 differs"),
    ],
)
def test_a_corrupted_or_incomplete_folder_is_refused_naming_the_file(
    saved: Path, tmp_path: Path, damage: str, named: str
) -> None:
    folder = shutil.copytree(saved, tmp_path / "model")
    action, name = damage.split()
    path = folder / name
    if action == "delete":
        path.unlink()
    elif action == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif action == "flip":
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.write_text("{not json")
    with pytest.raises(ConfigError) as info:
        fk.FusionPipeline.from_pretrained(folder)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_a_weights_file_without_a_checksum_is_still_checked_against_the_model(saved: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(saved, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    del config["sha256"]
    config["run_config"]["model"]["fusion"]["out_dim"] = 64  # another width: the weights no longer fit
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model.safetensors: the weights do not fit the model config.json describes"):
        fk.FusionPipeline.from_pretrained(folder)


_FRESH = """
import json, sys
import fusionkit
pipe = fusionkit.FusionPipeline.from_pretrained(sys.argv[1])
meta = json.loads(sys.argv[4])
both = pipe.predict(derm=sys.argv[2], clinical=sys.argv[3], metadata=meta)
one = pipe.predict(derm=sys.argv[2], metadata=meta)
print(json.dumps({"both": both.__dict__, "one": one.__dict__}))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_fresh_process_from_pretrained_equals_the_predict_csv_row(saved: Path, run_dir: Path, tmp_path: Path) -> None:
    lesion, rows, images = _lesion(run_dir, 2)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FRESH,
            str(saved),
            str(images["derm"]),
            str(images["clinical"]),
            json.dumps(_flat(rows)),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    cli = subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", "predict", str(run_dir), "--data", str(run_dir / "synthetic"),
         "--split", "Training", "--out", str(tmp_path / "sub.csv"), "--quiet"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "decision scores, not probabilities" in cli.stdout  # the command says what the CSV holds
    folder = subprocess.run(
        [sys.executable, "-m", "fusionkit.cli", "predict", str(saved), "--data", str(run_dir / "synthetic"),
         "--split", "Training", "--out", str(tmp_path / "folder.csv"), "--quiet"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )  # fmt: skip
    assert folder.returncode == 0, folder.stderr  # a saved pipeline folder predicts as its run does
    assert (tmp_path / "folder.csv").read_text() == (tmp_path / "sub.csv").read_text()
    with (tmp_path / "sub.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["lesion_id"] == lesion)
    np.testing.assert_allclose(
        [got["both"]["values"][c] for c in CLASS_NAMES], [float(row[c]) for c in CLASS_NAMES], atol=1e-6
    )
    assert got["both"]["missing"] == [] and got["one"]["missing"] == ["clinical"]
    assert sum(got["one"]["probs"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_copied_run_predicts_a_test_only_folder_with_default_options(run_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run_dir, tmp_path / "elsewhere" / "run", ignore=shutil.ignore_patterns("synthetic"))
    split = json.loads((copy / "split.json").read_text())
    assert not (copy / "synthetic").exists() and Path(split["root"]).name == "synthetic"
    (copy / "split.json").write_text(json.dumps({**split, "root": str(tmp_path / "deleted")}))
    # an untrusted run folder must not decide where this process writes (issue 28): its cache_dir is ignored
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["data"]["cache_dir"] = str(tmp_path / "not-here")
    (copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    test = tmp_path / "new-clinic"
    make_synthetic_milk10k(test, n_lesions=6, photo_size=(40, 30), seed=9, split="Test", with_ground_truth=False)
    out = tmp_path / "submission.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusionkit.cli",
            "predict",
            str(copy),
            "--data",
            str(test),
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={**ENV, "FUSIONKIT_CACHE": str(tmp_path / "cache")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "not-here").exists() and any((tmp_path / "cache").iterdir())
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["split"] == "Test" and record["lesions"] == 6 and record["thresholds_from"] == "stored"
    stored = json.loads((run_dir / "inference.json").read_text())["decision"]["thresholds"]
    assert record["thresholds"] == stored
    with out.open() as f:
        assert len(list(csv.DictReader(f))) == 6


def test_onnx_export_from_the_pipeline_agrees_and_carries_the_decision(
    pipe: fk.FusionPipeline, run_dir: Path, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = pipe.export_onnx(tmp_path / "model.onnx")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["decision"] == pipe.decision.to_dict() and sidecar["image"] == pipe.preprocessing.to_dict()
    dataset = pipe.dataset(data_root=run_dir / "synthetic", lesion_ids=pipe.split["val"][:4])
    batch = dataset.collate(range(4))
    feeds = {}
    for m in ("derm", "clinical"):
        image = batch[m].float() / 255
        mean, std = torch.tensor(sidecar["image"]["mean"]), torch.tensor(sidecar["image"]["std"])
        feeds[m] = ((image - mean[:, None, None]) / std[:, None, None]).numpy()
    feeds["meta"] = batch["meta"].numpy()
    feeds.update({f"present_{m}": batch["present"][m].numpy() for m in ("derm", "clinical", "meta")})
    probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], feeds)[0]
    np.testing.assert_allclose(probs, pipe.predict_dataset(dataset).probs, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    seed=st.integers(0, 1000),
    minimum=st.integers(0, 8),
)
def test_a_class_with_too_few_positives_keeps_half(labels: list[int], seed: int, minimum: int) -> None:
    probs = np.random.default_rng(seed).dirichlet(np.ones(4), size=len(labels))
    record = fit_decision(labels, probs, ("a", "b", "c", "d"), min_positives=minimum)
    for c in range(4):
        positives = labels.count(c)
        assert record.positives[c] == positives and record.fitted[c] == (positives >= minimum)
        if positives < minimum:
            assert record.thresholds[c] == 0.5
    assert DecisionRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    values = record.apply(probs)
    assert np.array_equal(values > 0.5, probs > np.asarray(record.thresholds))


def test_decision_rules_say_what_the_values_are(pipe: fk.FusionPipeline) -> None:
    assert "sums to 1" in pipe.with_decision("probs").decision.describe()
    assert "one-hot" in pipe.with_decision("argmax").decision.describe()
    assert "not probabilities" in pipe.decision.describe()
    with pytest.raises(ConfigError, match="unknown decision rule 'vote'"):
        pipe.with_decision("vote")


def test_a_model_trained_without_monet_needs_no_monet_scores(tmp_path: Path) -> None:
    config = tiny_run_config(tmp_path / "cache", epochs=1, n_lesions=30)
    config["data"]["metadata_features"] = ["age", "sex", "site", "skin_tone", "altered"]
    train_carried_run(config, tmp_path / "run")
    encoder = fk.data.MetadataEncoder.load(tmp_path / "run" / "metadata_encoder.json")
    assert encoder.features == ("age", "sex", "site", "skin_tone", "altered") and encoder.metadata_width == 35 - 14
    pipe = fk.FusionPipeline.from_pretrained(fk.FusionPipeline.from_run(tmp_path / "run").save(tmp_path / "model"))
    _, rows, images = _lesion(tmp_path / "run")
    lesion = {k: v for k, v in _flat(rows).items() if "MONET" not in k}
    result = pipe.predict(derm=images["derm"], clinical=images["clinical"], metadata=lesion)
    assert result.imputed == [] and sum(result.probs.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(DataError, match=r"^metadata lacks site, derm.image_manipulation; this model"):
        pipe.predict(
            derm=images["derm"],
            metadata={k: v for k, v in lesion.items() if k not in ("site",) and not k.startswith("derm.")},
        )
    text = (tmp_path / "model" / "README.md").read_text()
    assert "derm.MONET" not in text and "derm.image_manipulation" in text


def test_old_encoder_files_load_with_every_feature(tmp_path: Path) -> None:
    encoder = fk.data.MetadataEncoder(features=("age", "sex"))
    assert encoder.feature_names == ("age", "age_missing", "sex=male", "sex=female", "sex=unknown")
    full = fk.data.MetadataEncoder()
    full.age_mean, full.age_std, full.monet_mean, full.monet_std = 50.0, 10.0, (0.5,) * 14, (0.1,) * 14
    old = full.to_dict()
    del old["features"]  # what fusionkit wrote before encoders chose their features
    assert fk.data.MetadataEncoder.from_dict(old).features == fk.data.metadata.FEATURE_GROUPS
    with pytest.raises(ValueError, match="unknown metadata feature"):
        fk.data.MetadataEncoder(features=("age", "weight"))
    with pytest.raises(Exception, match="metadata_features"):
        RunConfig.model_validate({**tiny_run_config(tmp_path), "data": {"metadata_features": ["age", "colour"]}})


def test_a_hub_id_that_cannot_be_had_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nobody/no-such-model: cannot download the Hub repository") as info:
        fk.FusionPipeline.from_pretrained("nobody/no-such-model", local_files_only=True, cache_dir=tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not a folder written by FusionPipeline.save"):
        fk.FusionPipeline.from_pretrained(tmp_path / "missing" / "folder")


def test_an_ensemble_averages_its_members_stored_thresholds() -> None:
    names = ("a", "b", "c")
    one = DecisionRecord("thresholds", names, (0.2, 0.5, 0.9), (True, False, True), (6, 1, 7), 5, 14)
    two = DecisionRecord("thresholds", names, (0.4, 0.5, 0.5), (True, False, False), (5, 2, 3), 5, 10)
    both = average_decisions([one, two])
    assert both.thresholds == pytest.approx((0.3, 0.5, 0.7)) and both.fitted == (True, False, True)
    assert both.positives == (11, 3, 10) and both.lesions == 24 and both.rule == "thresholds"
    assert average_decisions([one]) is one


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list:
    from fusionkit.data.tables import read_metadata

    files = make_synthetic_milk10k(tmp_path_factory.mktemp("records"), n_lesions=30, photo_size=(8, 6), seed=4)
    return read_metadata(files.metadata_csv)


@settings(max_examples=20, deadline=None)
@given(features=st.sets(st.sampled_from(("age", "sex", "site", "skin_tone", "monet", "altered")), min_size=1))
def test_an_encoder_of_some_features_encodes_those_columns_of_the_full_encoding(records, features: set[str]) -> None:
    full = fk.data.MetadataEncoder().fit(records)
    some = fk.data.MetadataEncoder(features=sorted(features)).fit(records)
    columns = [full.feature_names.index(name) for name in some.feature_names]
    assert torch.equal(some.transform(records), full.transform(records)[:, columns])
    assert some.features == tuple(f for f in fk.data.metadata.FEATURE_GROUPS if f in features)
    assert fk.data.MetadataEncoder.from_dict(some.to_dict()).feature_names == some.feature_names
