"""The metadata encoder: layout, training-only statistics, persistence, vocabulary errors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from data_fixtures import make_set

from fusionkit.data import MetadataEncoder, Milk10kDataset, read_milk10k, train_val_split
from fusionkit.data.schema import MONET_COLUMNS, SITES
from fusionkit.errors import DataError, FusionkitError


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return read_milk10k(make_set(tmp_path_factory.mktemp("milk"), n_lesions=60, seed=2))


def test_width_and_feature_names():
    encoder = MetadataEncoder()
    assert encoder.metadata_width == 35 == len(encoder.feature_names)
    assert encoder.feature_names[:2] == ("age", "age_missing")
    assert encoder.feature_names[-2:] == ("derm.altered", "clinical.altered")
    assert "site=unknown" in encoder.feature_names and "sex=unknown" in encoder.feature_names


def test_fitted_on_the_training_split_only(table):
    lesions = table.lesions
    split = train_val_split([x.lesion_id for x in lesions], [x.label for x in lesions], seed=0)
    train = [x for x in lesions if x.lesion_id in set(split.train)]
    encoder = MetadataEncoder().fit(train)
    ages = np.array([x.age for x in train if x.age is not None])
    assert encoder.age_mean == pytest.approx(ages.mean()) and encoder.age_std == pytest.approx(ages.std())
    derm = np.array([x.derm.monet for x in train])
    clinical = np.array([x.clinical.monet for x in train])
    assert np.allclose(encoder.monet_mean, np.concatenate([derm.mean(0), clinical.mean(0)]))
    assert np.allclose(encoder.monet_std, np.concatenate([derm.std(0), clinical.std(0)]))
    whole = MetadataEncoder().fit(lesions)
    assert whole.age_mean != encoder.age_mean
    # the dataset fits on its own (training) lesions and validation reuses that encoder
    train_set = Milk10kDataset(files=table.files, lesion_ids=split.train)
    val_set = Milk10kDataset(files=table.files, lesion_ids=split.val, encoder=train_set.encoder)
    assert train_set.encoder.to_dict() == encoder.to_dict()
    assert val_set.encoder is train_set.encoder
    by_id = {x.lesion_id: x for x in lesions}
    assert torch.allclose(val_set[0]["meta"], encoder.transform_one(by_id[val_set.lesion_ids[0]]))


def test_training_statistics_standardise_the_training_split(table):
    encoder = MetadataEncoder().fit(table.lesions)
    x = encoder.transform(table.lesions).numpy()
    monet = x[:, 19:33]
    assert np.allclose(monet.mean(0), 0.0, atol=1e-5) and np.allclose(monet.std(0), 1.0, atol=1e-4)
    known = x[:, 1] == 0
    assert np.isclose(x[known, 0].mean(), 0.0, atol=1e-5)


def test_encoding_of_each_part(table):
    encoder = MetadataEncoder().fit(table.lesions)
    record = replace(table.lesions[0], age=None, sex=None, site=None, skin_tone=None)
    v = encoder.transform_one(record)
    names = encoder.feature_names
    assert v[names.index("age")] == 0 and v[names.index("age_missing")] == 1
    assert v[names.index("sex=unknown")] == 1 and v[names.index("sex=male")] == 0
    assert v[names.index("site=unknown")] == 1
    assert all(v[names.index(f"skin_tone={t}")] == 0 for t in range(6))
    record = replace(table.lesions[0], age=50.0, sex="female", site="foot", skin_tone=0)
    v = encoder.transform_one(record)
    assert v[names.index("age")] == pytest.approx((50.0 - encoder.age_mean) / encoder.age_std)
    assert v[names.index("sex=female")] == 1 and v[names.index("site=foot")] == 1
    assert v[names.index("skin_tone=0")] == 1 and v[names.index("age_missing")] == 0
    assert sum(float(v[names.index(f"site={s}")]) for s in (*SITES, "unknown")) == 1
    altered = replace(record, clinical=replace(record.clinical, manipulation="altered"))
    w = encoder.transform_one(altered)
    assert w[names.index("clinical.altered")] == 1 and w[names.index("derm.altered")] == 0
    absent = replace(record, derm=None)
    u = encoder.transform_one(absent)
    assert not u[names.index(f"derm.{MONET_COLUMNS[0]}") :][:7].any()


def test_value_outside_vocabulary_names_file_line_lesion(table):
    encoder = MetadataEncoder().fit(table.lesions)
    bad = replace(table.lesions[3], site="elbow")
    with pytest.raises(DataError, match="site is 'elbow'") as info:
        encoder.transform([bad])
    assert info.value.path == table.files.metadata_csv
    assert info.value.row == bad.line and info.value.lesion_id == bad.lesion_id


def test_save_load_round_trip(table, tmp_path):
    encoder = MetadataEncoder().fit(table.lesions[:40])
    path = tmp_path / "sub" / "metadata_encoder.json"
    encoder.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["metadata_encoder.json"], "no temp file left"
    loaded = MetadataEncoder.load(path)
    assert loaded.to_dict() == encoder.to_dict()
    assert torch.equal(loaded.transform(table.lesions), encoder.transform(table.lesions))
    assert json.loads(path.read_text())["format"] == "fusionkit.metadata_encoder"


def test_load_rejects_bad_files(tmp_path):
    path = tmp_path / "enc.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        MetadataEncoder.load(path)
    path.write_text(json.dumps({"format": "something else", "version": 1}))
    with pytest.raises(DataError, match="expected 'fusionkit.metadata_encoder'"):
        MetadataEncoder.load(path)
    with pytest.raises(DataError, match="cannot read"):
        MetadataEncoder.load(tmp_path / "missing.json")


def test_unfitted_encoder_refuses(table):
    with pytest.raises(FusionkitError, match="not fitted"):
        MetadataEncoder().transform(table.lesions)
    with pytest.raises(FusionkitError, match="at least one"):
        MetadataEncoder().fit([])


# -- pinned details (each closes mutants of the 2026-11-27 mutmut run; tests/README.md) ---------
def _raises_exactly(call, message: str, error=DataError) -> None:
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_every_encoding_error_names_file_line_lesion_exactly(table):
    encoder = MetadataEncoder().fit(table.lesions)
    rec = table.lesions[3]
    where = f"{rec.metadata_csv}, line {rec.line}, lesion {rec.lesion_id}: "
    _raises_exactly(
        lambda: encoder.transform([replace(rec, sex="other")]),
        where + "sex is 'other'; expected one of 'male', 'female'",
    )
    _raises_exactly(
        lambda: encoder.transform([replace(rec, skin_tone=7)]),
        where + "skin_tone_class is 7; expected one of 0, 1, 2, 3, 4, 5",
    )
    bad_scores = (0.2, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0)
    _raises_exactly(
        lambda: encoder.transform([replace(rec, derm=replace(rec.derm, monet=bad_scores))]),
        where + f"MONET scores {bad_scores}; expected 7 values in [0, 1]",
    )
    for image in ("derm", "clinical"):
        cropped = replace(getattr(rec, image), manipulation="cropped")
        _raises_exactly(
            lambda image=image, cropped=cropped: encoder.transform([replace(rec, **{image: cropped})]),
            where + "image_manipulation is 'cropped'; expected 'instrument only' or 'altered'",
        )


def test_encoding_pins_skin_tone_scores_at_the_bounds_and_the_altered_flags(table):
    encoder = MetadataEncoder().fit(table.lesions)
    names = encoder.feature_names
    rec = table.lesions[0]
    edge = replace(
        rec,
        skin_tone=3,
        derm=replace(rec.derm, monet=(0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5), manipulation="altered"),
        clinical=None,
    )
    v = encoder.transform([edge])
    assert v.dtype == torch.float32 and v.shape == (1, 35)
    assert [t for t in range(6) if v[0, names.index(f"skin_tone={t}")] == 1] == [3]
    assert (v[0, names.index("derm.altered")], v[0, names.index("clinical.altered")]) == (1, 0)
    expected = (np.array(edge.derm.monet) - encoder.monet_mean[:7]) / encoder.monet_std[:7]
    assert np.allclose(v[0, names.index(f"derm.{MONET_COLUMNS[0]}") :][:7].numpy(), expected)


def test_statistics_fall_back_to_mean_0_std_1_only_without_values_or_spread(table):
    rec = table.lesions[0]
    fresh = MetadataEncoder()
    assert (fresh.age_mean, fresh.age_std, fresh.monet_mean, fresh.monet_std, fresh.n_fitted) == (
        None,
        None,
        None,
        None,
        0,
    )
    assert repr(fresh) == "MetadataEncoder(metadata_width=35, not fitted)"
    no_ages = MetadataEncoder().fit([replace(rec, age=None)] * 2)
    assert (no_ages.age_mean, no_ages.age_std) == (0.0, 1.0)
    one = MetadataEncoder().fit([replace(rec, age=50.0)])
    assert (one.age_mean, one.age_std) == (50.0, 1.0)
    assert repr(one) == "MetadataEncoder(metadata_width=35, fitted on 1 lesions)"
    two = MetadataEncoder().fit([replace(rec, age=30.0), replace(rec, age=70.0, lesion_id="x")])
    assert (two.age_mean, two.age_std) == (50.0, 20.0)
    _raises_exactly(
        lambda: MetadataEncoder().fit([]), "MetadataEncoder.fit needs at least one lesion record", FusionkitError
    )
    _raises_exactly(
        lambda: MetadataEncoder().transform([rec]),
        "MetadataEncoder is not fitted: call fit(training records) or MetadataEncoder.load(path)",
        FusionkitError,
    )


def test_every_load_error_names_the_file_exactly(table, tmp_path):
    encoder = MetadataEncoder().fit(table.lesions)
    path = tmp_path / "enc.json"
    encoder.save(path)
    assert path.read_text().startswith('{\n  "format": "fusionkit.metadata_encoder",\n  "version"')
    good = json.loads(path.read_text())

    def load_state(state) -> MetadataEncoder:
        path.write_text(json.dumps(state))
        return MetadataEncoder.load(path)

    _raises_exactly(
        lambda: load_state({**good, "version": 2}),
        f"{path}: format 'fusionkit.metadata_encoder' version 2; expected 'fusionkit.metadata_encoder' version 1",
    )
    names = MetadataEncoder().feature_names
    _raises_exactly(
        lambda: load_state({**good, "feature_names": list(names[:-1])}),
        f"{path}: feature names differ from this fusionkit version's metadata encoding; expected " + ", ".join(names),
    )
    _raises_exactly(
        lambda: load_state({k: v for k, v in good.items() if k != "age"}),
        f"{path}: malformed metadata encoder state (KeyError('age'))",
    )
    short = {**good, "monet": {"mean": good["monet"]["mean"][:13], "std": good["monet"]["std"]}}
    _raises_exactly(lambda: load_state(short), f"{path}: expected 14 MONET means and standard deviations")
    _raises_exactly(lambda: load_state([good]), f"{path}: expected a JSON object")
    missing = tmp_path / "absent.json"
    _raises_exactly(
        lambda: MetadataEncoder.load(missing),
        f"{missing}: cannot read a metadata encoder ([Errno 2] No such file or directory: '{missing}')",
    )
