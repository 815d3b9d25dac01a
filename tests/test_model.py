"""The assembled FusionModel: shapes, eq 6 and the decisions, missing modalities, modality dropout."""

from __future__ import annotations

import pydantic
import pytest
import torch
from conftest import (
    METADATA_WIDTH,
    TINY_BACKBONE,
    build_tiny,
    make_batch,
    presence_masks,
    spec_dicts,
    tiny_spec,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import fusionkit as fk
from fusionkit.specs import BRANCHES

ATOL = 1e-5


def _assert_simplex(rows: torch.Tensor) -> None:
    assert (rows >= 0).all()
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[0]), rtol=0, atol=ATOL)


@st.composite
def model_cases(draw, decision: str):
    spec = fk.ModelSpec.model_validate(draw(spec_dicts(buildable=True, decision=decision)))
    batch_size = draw(st.integers(1, 4))
    needs = ()
    if "joint" not in spec.decision_branches:  # the joint branch is there whenever anything is
        needs = (sum((_inputs_of(spec, b) for b in spec.decision_branches), ()),)
    present = draw(presence_masks(spec.modalities, batch_size, needs))
    return spec, batch_size, present, draw(st.integers(0, 1000))


def _inputs_of(spec: fk.ModelSpec, branch: str) -> tuple[str, ...]:
    return spec.image_modalities if branch == "image" else ("meta",)


def _check_eq_6_and_the_decision(model: fk.FusionModel, out: fk.FusionOutput) -> None:
    """probs is the weighted mix of the branch posteriors, with the weights each decision defines."""
    spec = model.spec
    branches = spec.decision_branches
    mask = torch.stack([out.present[b] for b in branches], dim=1)
    posteriors = torch.stack([out.logits[b].softmax(-1) for b in branches], dim=1)  # (B, K, N)
    kind = spec.decision.kind
    if kind == "single":
        assert out.weights is None
        torch.testing.assert_close(out.probs, out.logits[spec.decision.branch].softmax(-1))
        return
    weights = out.weights[:, [BRANCHES.index(b) for b in branches]]
    # eq 6: P_final = sum_k alpha_k P_k
    torch.testing.assert_close(out.probs, (weights[:, :, None] * posteriors).sum(1), rtol=1e-5, atol=ATOL)
    if kind == "average":
        mean = (posteriors * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
        torch.testing.assert_close(out.probs, mean, rtol=1e-5, atol=ATOL)
        torch.testing.assert_close(weights, mask.float() / mask.sum(1, keepdim=True))
    elif kind == "adf":
        # eq 5 from the model's own branch logits: s = [z_I || z_IM || z_M]
        gate = model.decision.gate
        s = torch.cat([out.logits[b] * mask[:, i : i + 1] for i, b in enumerate(branches)], dim=1)
        scores = gate[2](gate[1](s @ gate[0].weight.T + gate[0].bias))
        expected = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        torch.testing.assert_close(weights, expected, rtol=1e-5, atol=ATOL)


@pytest.mark.parametrize("decision", fk.list_components("decision"))
@settings(max_examples=25)
@given(data=st.data())
def test_model_outputs_for_any_valid_spec(decision, data):
    spec, batch_size, present, seed = data.draw(model_cases(decision))
    model = build_tiny(spec, seed=seed).eval()
    batch = make_batch(spec, batch_size, seed=seed, present=present)
    with torch.no_grad():
        out = model(batch)
    n = spec.num_classes
    assert out.probs.shape == out.log_probs.shape == (batch_size, n)
    assert set(out.logits) == set(spec.head_branches)
    assert all(z.shape == (batch_size, n) for z in out.logits.values())
    assert torch.isfinite(out.log_probs).all()
    _assert_simplex(out.probs)
    torch.testing.assert_close(out.log_probs.exp(), out.probs)
    for branch, width in model.feature_dims.items():
        assert out.features[branch].shape == (batch_size, width)

    # which branches each sample has
    images = [m for m in spec.image_modalities]
    if images:
        expected = torch.tensor([any(present[m][i] for m in images) for i in range(batch_size)])
        assert torch.equal(out.present["image"], expected)
    if spec.uses_meta:
        assert torch.equal(out.present["meta"], torch.tensor(present["meta"]))
    if spec.fusion is not None:
        assert out.present["joint"].all()

    if type(spec.decision).has_weights:
        assert out.weights.shape == (batch_size, 3)
        _assert_simplex(out.weights)
        for i, b in enumerate(BRANCHES):
            unused = b not in spec.decision_branches
            absent = ~out.present[b] if b in out.present else torch.ones(batch_size, dtype=torch.bool)
            assert (out.weights[absent | unused, i] == 0).all(), b
    else:
        assert out.weights is None
    _check_eq_6_and_the_decision(model, out)

    # permuting the batch permutes every output
    perm = torch.randperm(batch_size, generator=torch.Generator().manual_seed(seed))
    permuted = {m: batch[m][perm] for m in spec.modalities}
    permuted["present"] = {m: v[perm] for m, v in batch["present"].items()}
    with torch.no_grad():
        again = model(permuted)
    torch.testing.assert_close(again.probs, out.probs[perm], rtol=1e-4, atol=ATOL)
    for b in out.logits:
        torch.testing.assert_close(again.logits[b], out.logits[b][perm], rtol=1e-4, atol=1e-4)
    if out.weights is not None:
        torch.testing.assert_close(again.weights, out.weights[perm], rtol=1e-4, atol=ATOL)


def test_default_model_forward_backward_reaches_every_parameter():
    spec = tiny_spec(heads={"dropout": 0.1})
    model = build_tiny(spec).train()
    batch = make_batch(spec, 4, present={"derm": [1, 0, 1, 1], "clinical": [1, 1, 0, 1], "meta": [0, 1, 1, 1]})
    out = model(batch)
    assert all(torch.isfinite(t).all() for t in (out.probs, out.log_probs, out.weights))
    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, torch.tensor([0, 1, 2, 3])).total
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    # the learned embeddings of the absent inputs are trained by the samples that lack them
    for m in ("derm", "clinical"):
        assert model.image_stream.missing[m].grad.abs().sum() > 0, m
    assert model.meta_stream.missing.grad.abs().sum() > 0


def test_build_model_from_a_dict_and_the_structure_it_builds():
    data = tiny_spec().to_dict()
    model = fk.build_model(data, metadata_width=METADATA_WIDTH)
    assert isinstance(model, fk.FusionModel) and model.spec == fk.ModelSpec.model_validate(data)
    assert set(model.image_stream.encoders) == {"derm", "clinical"}  # one backbone per image
    width = model.image_stream.width
    assert model.feature_dims == {"image": 2 * width, "meta": 12, "joint": 16}
    assert set(model.heads) == set(BRANCHES)
    assert model.metadata_width == METADATA_WIDTH


@pytest.mark.parametrize(("shared", "combine"), [(True, "concat"), (True, "mean"), (False, "mean")])
def test_shared_backbone_and_mean_combine(shared, combine):
    spec = tiny_spec(image_encoder={**TINY_BACKBONE, "shared": shared, "combine": combine})
    model = build_tiny(spec).eval()
    stream = model.image_stream
    assert list(stream.encoders) == (["shared"] if shared else ["derm", "clinical"])
    assert stream.out_dim == stream.width * (2 if combine == "concat" else 1)
    batch = make_batch(spec, 3)
    with torch.no_grad():
        out = model(batch)
        f_d = stream.encoders["shared" if shared else "derm"](batch["derm"])
        f_c = stream.encoders["shared" if shared else "clinical"](batch["clinical"])
    expected = torch.cat([f_d, f_c], -1) if combine == "concat" else (f_d + f_c) / 2
    torch.testing.assert_close(out.features["image"], expected, rtol=1e-5, atol=1e-5)


def test_metadata_width_must_be_known():
    with pytest.raises(fk.ConfigError, match="metadata_width"):
        fk.build_model(tiny_spec())
    # the width is the data's alone: no spec stores it, and a width key in a spec is refused by name
    with pytest.raises(pydantic.ValidationError, match=r"metadata_encoder\.mlp\.metadata_width"):
        tiny_spec(metadata_encoder={"kind": "mlp", "metadata_width": 9, "out_dim": 4})
    spec = tiny_spec(metadata_encoder={"kind": "mlp", "out_dim": 4})
    assert "metadata_width" not in spec.to_dict()["metadata_encoder"]
    with pytest.raises(fk.ConfigError, match="metadata_width"):
        fk.build_model(spec)
    model = fk.build_model(spec, metadata_width=3)
    assert model.metadata_width == 3 and model.meta_stream.encoder.net[0].in_features == 3


# -- missing modalities ------------------------------------------------------------------------
@pytest.mark.parametrize("decision", ["adf", "average"])
def test_absent_branches_get_zero_weight(decision):
    spec = tiny_spec(decision={"kind": decision})
    model = build_tiny(spec).eval()
    present = {"derm": [1, 0, 0, 1, 0], "clinical": [1, 0, 0, 0, 1], "meta": [1, 1, 0, 0, 0]}
    present["derm"][2] = 1
    with torch.no_grad():
        out = model(make_batch(spec, 5, present=present))
    #            image joint meta
    expected = [[1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert torch.equal(out.weights > 0, torch.tensor(expected, dtype=torch.bool))
    _assert_simplex(out.weights)
    _assert_simplex(out.probs)
    if decision == "average":
        torch.testing.assert_close(out.weights[1], torch.tensor([0.0, 0.5, 0.5]))
        torch.testing.assert_close(out.weights[0], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("absent", ["derm", "clinical", "meta"])
@pytest.mark.parametrize("preset_like", ["ji-adf", "late-concat", "ji-mmfa-mean"])
def test_absent_input_is_replaced_by_its_learned_embedding(absent, preset_like):
    fields = {
        "ji-adf": {},
        "late-concat": {
            "fusion": {"kind": "concat"},
            "decision": {"kind": "single"},
            "loss": {"lambda_joint": 0, "lambda_image": 0, "lambda_meta": 0},
        },
        "ji-mmfa-mean": {
            "decision": {"kind": "average"},
            "image_encoder": {**TINY_BACKBONE, "shared": True, "combine": "mean"},
        },
    }[preset_like]
    spec = tiny_spec(**fields)
    model = build_tiny(spec)
    with torch.no_grad():  # non-zero learned embeddings, so "replaced" is visible
        for p in [*model.image_stream.missing.values(), model.meta_stream.missing]:
            p.uniform_(-1, 1)
    model.eval()
    present = {m: [True, True, True] for m in spec.modalities}
    present[absent] = [True, False, True]  # sample 1 lacks the input
    batch = make_batch(spec, 3, present=present)
    other = make_batch(spec, 3, present=present, seed=99)
    changed = dict(batch)
    changed[absent] = batch[absent].clone()
    changed[absent][1] = other[absent][1]  # new values for the absent input of sample 1 only
    with torch.no_grad():
        out, out2 = model(batch), model(changed)
    torch.testing.assert_close(out2.probs[1], out.probs[1], rtol=0, atol=0)
    for b in out.logits:
        torch.testing.assert_close(out2.logits[b][1], out.logits[b][1], rtol=0, atol=0)
    # ... whereas the same change to a present sample changes its output
    changed[absent][0] = other[absent][0]
    with torch.no_grad():
        assert not torch.allclose(model(changed).probs[0], out.probs[0])

    if absent == "meta":
        torch.testing.assert_close(out.features["meta"][1], model.meta_stream.missing)
    else:
        stream = model.image_stream
        if stream.combine == "concat":
            i = spec.image_modalities.index(absent)
            part = out.features["image"][1, i * stream.width : (i + 1) * stream.width]
            torch.testing.assert_close(part, stream.missing[absent])


def test_sample_with_no_modality_raises():
    spec = tiny_spec()
    model = build_tiny(spec).eval()
    present = {"derm": [1, 0, 1], "clinical": [1, 0, 0], "meta": [0, 0, 1]}
    with pytest.raises(fk.MissingModalityError, match=r"samples \[1\]"):
        model(make_batch(spec, 3, present=present))
    assert issubclass(fk.MissingModalityError, fk.FusionkitError)


def test_sample_without_the_deciding_input_raises():
    spec = fk.load_preset("ji-adf-d", {"image_encoder": TINY_BACKBONE, "image_size": 32})
    model = build_tiny(spec).eval()
    with pytest.raises(fk.MissingModalityError, match=r"samples \[0, 2\]"):
        model(make_batch(spec, 3, present={"derm": [0, 1, 0]}))


def test_check_presence_before_the_forward():
    spec = tiny_spec(modality_dropout={"p": 0.99})
    model = build_tiny(spec).train()
    good = make_batch(spec, 3, present={"derm": [1, 0, 0], "clinical": [0, 0, 0], "meta": [0, 1, 1]})
    torch.manual_seed(0)
    for _ in range(5):
        model.check_presence(good)  # dropout never counts: it cannot empty a sample anyway
    bad = make_batch(spec, 3, present={"derm": [1, 0, 0], "clinical": [0, 0, 0], "meta": [0, 0, 1]})
    with pytest.raises(fk.MissingModalityError, match=r"samples \[1\]"):
        model.check_presence(bad)


def test_batch_without_an_input_tensor_raises():
    spec = tiny_spec()
    model = build_tiny(spec).eval()
    batch = make_batch(spec, 2)
    del batch["clinical"]
    with pytest.raises(fk.MissingModalityError, match="no 'clinical' tensor"):
        model(batch)
    with pytest.raises(fk.MissingModalityError, match="none of this model's inputs"):
        model({"label": torch.zeros(2)})


# -- modality dropout --------------------------------------------------------------------------
def test_modality_dropout_only_in_train_mode_and_never_drops_everything():
    spec = tiny_spec(modality_dropout={"p": 0.8})
    model = build_tiny(spec)
    size = 400
    gen = torch.Generator().manual_seed(0)
    given = {m: torch.rand(size, generator=gen) < 0.7 for m in spec.modalities}
    given["meta"][~(given["derm"] | given["clinical"])] = True  # every sample has something
    batch = {
        "derm": torch.zeros(size, 1),
        "clinical": torch.zeros(size, 1),
        "meta": torch.zeros(size, METADATA_WIDTH),
        "present": given,
    }

    model.eval()
    present = model.presence(batch)
    assert all(torch.equal(present[m], given[m]) for m in spec.modalities)

    model.train()
    torch.manual_seed(0)
    for _ in range(5):
        present = model.presence(batch)
        kept = torch.stack([present[m] for m in spec.modalities], 1)
        had = torch.stack([given[m] for m in spec.modalities], 1)
        assert kept.any(1).all(), "a sample lost all its modalities"
        assert not (kept & ~had).any(), "dropout made an absent modality present"
        dropped = (had & ~kept).float().sum() / had.float().sum()
        assert 0.5 < dropped < 0.85  # p = 0.8, minus the rescued ones
        # samples that had one modality keep it
        single = had.sum(1) == 1
        assert torch.equal(kept[single], had[single])


def test_modality_dropout_forward_in_train_mode_and_off_by_default():
    spec = tiny_spec(modality_dropout={"p": 0.9})
    model = build_tiny(spec).train()
    torch.manual_seed(1)
    for seed in range(3):
        out = model(make_batch(spec, 6, seed=seed))
        _assert_simplex(out.probs.detach())
        absent = torch.stack([~out.present[b] for b in BRANCHES], 1)
        assert (out.weights[absent] == 0).all()
    assert absent.any()  # something was dropped

    plain = build_tiny(tiny_spec()).train()
    batch = make_batch(spec, 6)
    assert all(v.all() for v in plain.presence(batch).values())


# -- pinned details (each closes a mutant of the 2026-11-27 mutmut run; tests/README.md) -------
def _meta_device_batch(spec: fk.ModelSpec, size: int, present: dict | None = None) -> dict:
    batch = {m: torch.empty(size, 3, 32, 32, device="meta") for m in spec.image_modalities}
    batch["meta"] = torch.empty(size, METADATA_WIDTH, device="meta")
    if present is not None:
        batch["present"] = {m: torch.as_tensor(v, device="meta") for m, v in present.items()}
    return batch


@pytest.mark.parametrize("p", [0.0, 0.5])
@pytest.mark.parametrize("given", [False, True])
def test_presence_masks_live_on_the_batch_device(p, given):
    model = build_tiny(tiny_spec(modality_dropout={"p": p})).train()
    present = {m: [True, False] for m in model.modalities} if given else None
    masks = model.presence(_meta_device_batch(model.spec, 2, present))
    assert [(m.device.type, m.dtype, m.shape) for m in masks.values()] == [("meta", torch.bool, (2,))] * 3


def test_presence_draws_random_numbers_only_for_modality_dropout():
    """p = 0 and check_presence leave the global random stream alone (reproducible runs)."""
    batch = make_batch(tiny_spec(), 4)
    for model, call in [
        (build_tiny(tiny_spec()).train(), lambda m: m.presence(batch)),
        (build_tiny(tiny_spec(modality_dropout={"p": 0.9})).train(), lambda m: m.check_presence(batch)),
    ]:
        torch.manual_seed(0)
        call(model)
        drawn = torch.rand(3)
        torch.manual_seed(0)
        assert torch.equal(drawn, torch.rand(3))


def test_modality_dropout_never_revives_a_sample_without_inputs_nor_an_unused_modality():
    model = build_tiny(tiny_spec(modality_dropout={"p": 0.9})).train()
    given = {
        "derm": [True, False, True, False],
        "clinical": [True, False, False, True],
        "meta": [False] * 4,
    }  # no sample has metadata, sample 1 has nothing at all
    torch.manual_seed(0)
    for _ in range(20):
        present = model.presence({**make_batch(model.spec, 4), "present": given})
        assert not present["meta"].any()
        assert not present["derm"][1] and not present["clinical"][1]
        assert (present["derm"] | present["clinical"])[[0, 2, 3]].all()


def test_a_single_image_model_names_its_backbone_after_the_image_whether_shared_or_not():
    """Checkpoint keys of a one-image model do not depend on ``shared`` (nothing to share)."""
    keys = []
    for shared in (False, True):
        spec = tiny_spec(modalities=["derm", "meta"], image_encoder={**TINY_BACKBONE, "shared": shared})
        model = build_tiny(spec)
        assert model.image_stream.shared is False
        keys.append(list(model.state_dict()))
    assert keys[0] == keys[1] and any(k.startswith("image_stream.encoders.derm.") for k in keys[0])


def test_heads_apply_the_spec_dropout_and_report_their_width():
    model = build_tiny(tiny_spec(heads={"dropout": 0.5}))
    assert model.num_classes == 5
    for branch, head in model.heads.items():
        assert head.out_dim == 5, branch
        x = torch.ones(64, head.linear.in_features)
        head.train()
        torch.manual_seed(0)
        dropped = head(x)
        head.eval()
        plain = head(x)
        assert not torch.allclose(dropped, plain), branch
    default = fk.model.ClassifierHead(in_dim=4, num_classes=2).train()
    x = torch.randn(8, 4)
    assert torch.equal(default(x), default.eval()(x))  # no dropout unless asked


def test_model_error_messages_are_exact():
    with pytest.raises(fk.ConfigError) as info:
        fk.build_model(tiny_spec())
    assert str(info.value) == (
        "the metadata encoder's input width is unknown: pass metadata_width= to build_model (the "
        "width of the encoded metadata, fusionkit.data.MetadataEncoder.metadata_width)"
    )
    model = build_tiny(tiny_spec()).eval()
    batch = make_batch(model.spec, 12, present={"derm": [0] * 12, "clinical": [0] * 12, "meta": [0] * 12})
    with pytest.raises(fk.MissingModalityError) as info:
        model.check_presence(batch)
    assert str(info.value) == (
        "samples [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] of the batch have none of the inputs the decision "
        "uses (['image', 'joint', 'meta'] from ['derm', 'clinical', 'meta']); every sample needs "
        "at least one present modality"
    )
    del batch["clinical"]
    with pytest.raises(fk.MissingModalityError) as info:
        model.presence(batch)
    assert str(info.value) == (
        "the batch has no 'clinical' tensor; this model uses ['derm', 'clinical', 'meta'] "
        "(send a zero tensor with present['clinical'] = False for absent inputs)"
    )


def test_learned_embeddings_follow_the_autocast_feature_dtype():
    """Under bf16 autocast an absent input's embedding is cast to the features' dtype, so f_I and
    f_M stay bf16 (a float32 embedding would promote the whole batch to float32)."""
    spec = tiny_spec()
    model = build_tiny(spec).eval()
    batch = make_batch(spec, 2, present={"derm": [1, 0], "clinical": [0, 1], "meta": [0, 1]})
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    assert {k: v.dtype for k, v in out.features.items()} == dict.fromkeys(("image", "meta", "joint"), torch.bfloat16)
    assert out.probs.dtype == torch.float32


def test_final_probabilities_never_exceed_one_when_logsumexp_rounds_up():
    """eq 6 is computed as exp(logsumexp(log alpha + log P_k)), which can round to 1 + 1.2e-7.

    The heads and the gate's last layer are set to constant outputs (zero weights, chosen biases),
    so the model's own forward meets such a rounding; ``probs`` must still be clamped to 1.
    """
    spec = tiny_spec()
    model = build_tiny(spec).eval()
    k, n = len(spec.decision_branches), spec.num_classes
    gen = torch.Generator().manual_seed(0)
    gates = torch.randn(4096, k, generator=gen) * 3
    logits = torch.randn(4096, k, n, generator=gen) * 3
    logits[:, :, 0] += torch.rand(4096, 1, generator=gen) * 40  # near-certain heads
    mixed = torch.logsumexp(gates.log_softmax(-1)[:, :, None] + logits.log_softmax(-1), dim=1)
    candidates = (mixed.exp() > 1).any(-1).nonzero().flatten().tolist()
    assert candidates, "no candidate rounds above 1"
    batch = make_batch(spec, 1)
    for i in candidates[:20]:
        with torch.no_grad():
            model.decision.gate[2].weight.zero_()
            model.decision.gate[2].bias.copy_(gates[i])
            for j, b in enumerate(spec.decision_branches):
                model.heads[b].linear.weight.zero_()
                model.heads[b].linear.bias.copy_(logits[i, j])
            out = model(batch)
        if (out.log_probs.exp() > 1).any():
            break
    else:
        pytest.fail("no candidate rounded above 1 through the model")
    assert out.probs.max() == 1.0
    torch.testing.assert_close(out.probs, out.log_probs.exp().clamp(max=1.0), rtol=0, atol=0)
