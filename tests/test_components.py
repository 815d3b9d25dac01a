"""Every registered component honours one contract; MMFA, ADF and friends equal their equations.

The fusion blocks, decisions and metadata encoders are tested directly (no backbone) so the
Hypothesis properties stay fast; the image encoder uses timm's tiny ``test_efficientnet``.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ACTIVATIONS, IMAGE_SIZE
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_open_clip import register as register_tiny_open_clip
from torch.nn import functional as F

import fusionkit as fk
from fusionkit.components.fusion.mmfa import AttentionOnlyFusion, MMFAFusion, SkipOnlyFusion
from fusionkit.components.image_encoders import TimmImageEncoder
from fusionkit.specs import BRANCHES

ACT_FN = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
"""The pointwise nonlinearities by the names a spec uses, written independently of the library."""

CONTEXT = {"metadata_width": 7, "image_dim": 10, "meta_dim": 6, "num_classes": 4}

TINY_MODELS = {"timm": "test_efficientnet", "open_clip": register_tiny_open_clip()}
"""The CPU-sized model of each built-in image-encoder kind (a tiny architecture registered with open_clip)."""


def _all_components():
    return [
        pytest.param(kind, name, id=f"{kind}:{name}")
        for kind in fk.COMPONENT_KINDS
        for name in fk.list_components(kind)
    ]


def _build(kind: str, name: str, **overrides):
    """A component of ``kind``/``name`` from its default spec plus the builder's context."""
    entry = fk.registry(kind).get(name)
    fields = entry.spec.model_fields
    if kind == "image_encoder" and "model_name" in fields:
        overrides = {"model_name": TINY_MODELS.get(name, "test_efficientnet"), "pretrained": False, **overrides}
    spec = entry.spec(**{k: v for k, v in overrides.items() if k in fields})
    kwargs = spec.component_kwargs()
    context: dict = {}
    if kind == "metadata_encoder":
        context = {"metadata_width": overrides.get("metadata_width", CONTEXT["metadata_width"])}
    elif kind == "fusion":
        context = {k: overrides.get(k, CONTEXT[k]) for k in ("image_dim", "meta_dim")}
    elif kind == "decision":
        context = {
            "num_classes": overrides.get("num_classes", CONTEXT["num_classes"]),
            "branches": spec.decision_branches(BRANCHES),
        }
    kwargs.update(context)
    return entry.component(**kwargs), spec, context


def _inputs(kind: str, module, context: dict, batch: int, gen: torch.Generator):
    if kind == "image_encoder":
        return (torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen),)
    if kind == "metadata_encoder":
        return (torch.randn(batch, context["metadata_width"], generator=gen),)
    if kind == "fusion":
        return (
            torch.randn(batch, context["image_dim"], generator=gen),
            torch.randn(batch, context["meta_dim"], generator=gen),
        )
    logits = {b: torch.randn(batch, context["num_classes"], generator=gen) for b in context["branches"]}
    present = torch.ones(batch, len(context["branches"]), dtype=torch.bool)
    return logits, present


# -- the contract every registered component honours ---------------------------------------------------
@pytest.mark.parametrize(("kind", "name"), _all_components())
def test_component_contract(kind, name):
    torch.manual_seed(0)
    module, spec, context = _build(kind, name)
    assert isinstance(module.out_dim, int) and module.out_dim > 0
    batch = 3
    inputs = _inputs(kind, module, context, batch, torch.Generator().manual_seed(1))
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if kind == "decision":
        leaves = list(inputs[0].values())
    for t in leaves:
        t.requires_grad_(True)

    module.train()
    out = module(*inputs)
    assert out.shape == (batch, module.out_dim)
    assert not torch.isnan(out).any()
    assert torch.isfinite(out).all()
    if kind == "decision":
        assert module.out_dim == len(spec.decision_branches(BRANCHES))
        weights = out.exp()
        assert torch.allclose(weights.sum(-1), torch.ones(batch), atol=1e-5)

    params = dict(module.named_parameters())
    if not out.requires_grad:  # a fixed rule (average, single): nothing to learn, nothing to train
        assert kind == "decision" and not params, f"{kind}:{name} output is cut from its parameters"
        return
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    for pname, param in params.items():
        assert param.grad is not None, f"{kind}:{name} parameter {pname} got no gradient"
        assert torch.isfinite(param.grad).all(), pname
    if kind in ("metadata_encoder", "fusion", "image_encoder"):
        for t in leaves:
            assert t.grad is not None and torch.isfinite(t.grad).all()


def test_every_parameter_of_the_default_components_moves_the_output():
    """Stronger than 'has a gradient': for the learned blocks some gradient entry is non-zero."""
    for kind, name in (("fusion", "mmfa"), ("decision", "adf"), ("metadata_encoder", "mlp")):
        torch.manual_seed(0)
        module, _, context = _build(kind, name, dropout=0.0)
        out = module(*_inputs(kind, module, context, 4, torch.Generator().manual_seed(1)))
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        for pname, param in module.named_parameters():
            assert param.grad.abs().sum() > 0, f"{kind}:{name} {pname}"


# -- fusion blocks ---------------------------------------------------------------------------
fusion_dims = st.fixed_dictionaries(
    {
        "batch": st.integers(1, 5),
        "image_dim": st.integers(1, 12),
        "meta_dim": st.integers(1, 12),
        "attention_heads": st.integers(1, 4),
        "head_dim": st.integers(1, 6),
        "out_dim": st.integers(1, 10),
        "activation": st.sampled_from(ACTIVATIONS),
        "seed": st.integers(0, 2**16),
    }
)


@pytest.mark.parametrize("name", fk.list_components("fusion"))
@settings(max_examples=20)
@given(dims=fusion_dims)
def test_fusion_shapes_and_batch_permutation(name, dims):
    torch.manual_seed(dims["seed"])
    module, spec, _ = _build("fusion", name, **dims)
    module.eval()
    gen = torch.Generator().manual_seed(dims["seed"])
    f_i = torch.randn(dims["batch"], dims["image_dim"], generator=gen)
    f_m = torch.randn(dims["batch"], dims["meta_dim"], generator=gen)
    out = module(f_i, f_m)
    expected_width = spec.out_dim if hasattr(spec, "out_dim") else module.out_dim
    assert out.shape == (dims["batch"], module.out_dim) == (dims["batch"], expected_width)
    assert torch.isfinite(out).all()
    perm = torch.randperm(dims["batch"], generator=gen)
    torch.testing.assert_close(module(f_i[perm], f_m[perm]), out[perm], rtol=1e-5, atol=1e-6)


def _mmfa_reference(
    module: MMFAFusion, f_i: torch.Tensor, f_m: torch.Tensor, activation: str, *, attention: bool, skip: bool
) -> torch.Tensor:
    """Eqs 8-11 written out: one sample and one head at a time."""
    rows_out = []
    for b in range(f_i.shape[0]):
        x_i, x_m = f_i[b], f_m[b]
        total = 0.0
        if attention:
            att = module.attention
            d = att.head_dim
            vecs = []
            for h in range(att.attention_heads):
                rows = slice(h * d, (h + 1) * d)
                # eq 8: row 0 from the image features, row 1 from the metadata features
                q = torch.stack([att.query_image.weight[rows] @ x_i, att.query_meta.weight[rows] @ x_m])
                k = torch.stack([att.key_image.weight[rows] @ x_i, att.key_meta.weight[rows] @ x_m])
                v = torch.stack([att.value_image.weight[rows] @ x_i, att.value_meta.weight[rows] @ x_m])
                scores = q @ k.T / math.sqrt(d)  # 2 x 2
                weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
                weights = weights / weights.sum(dim=1, keepdim=True)  # softmax over each row
                u = weights @ v  # eq 9, 2 x d_h
                vecs.append(torch.cat([u[0], u[1]]))  # vec() stacks row-wise
            o = att.out_proj.weight @ torch.cat(vecs)  # eq 10
            linear = module.transform[0]
            total = total + ACT_FN[activation](linear.weight @ o + linear.bias)  # g(o)
        if skip:
            total = total + module.skip.weight @ torch.cat([x_i, x_m])  # W_skip [f_I || f_M]
        rows_out.append(total)
    return torch.stack(rows_out)


def _random_pair(dims, gen, scale=2.0):
    f_i = scale * torch.randn(dims["batch"], dims["image_dim"], generator=gen, dtype=torch.float64)
    f_m = scale * torch.randn(dims["batch"], dims["meta_dim"], generator=gen, dtype=torch.float64)
    return f_i, f_m


@settings(max_examples=40)
@given(dims=fusion_dims)
def test_mmfa_equals_eqs_8_to_11(dims):
    torch.manual_seed(dims["seed"])
    module, _, _ = _build("fusion", "mmfa", **dims)
    module = module.double().eval()
    att = module.attention
    inner = dims["attention_heads"] * dims["head_dim"]
    # the shapes of the paper's matrices, and no biases where the equations have none
    assert att.query_image.weight.shape == (inner, dims["image_dim"])
    assert att.value_meta.weight.shape == (inner, dims["meta_dim"])
    assert att.out_proj.weight.shape == (dims["out_dim"], 2 * inner)
    assert (att.attention_heads, att.head_dim, att.out_dim) == (
        dims["attention_heads"],
        dims["head_dim"],
        dims["out_dim"],
    )
    assert module.skip.weight.shape == (dims["out_dim"], dims["image_dim"] + dims["meta_dim"])
    for layer in (att.query_image, att.key_meta, att.value_image, att.out_proj, module.skip):
        assert layer.bias is None
    f_i, f_m = _random_pair(dims, torch.Generator().manual_seed(dims["seed"]))
    expected = _mmfa_reference(module, f_i, f_m, dims["activation"], attention=True, skip=True)
    torch.testing.assert_close(module(f_i, f_m), expected, rtol=1e-9, atol=1e-10)


@settings(max_examples=25)
@given(dims=fusion_dims)
def test_attention_only_equals_g_of_o(dims):
    torch.manual_seed(dims["seed"])
    module, _, _ = _build("fusion", "attention_only", **dims)
    module = module.double().eval()
    assert isinstance(module, AttentionOnlyFusion) and module.skip is None
    f_i, f_m = _random_pair(dims, torch.Generator().manual_seed(dims["seed"]))
    expected = _mmfa_reference(module, f_i, f_m, dims["activation"], attention=True, skip=False)
    torch.testing.assert_close(module(f_i, f_m), expected, rtol=1e-9, atol=1e-10)


@settings(max_examples=25)
@given(dims=fusion_dims, a=st.floats(-3.0, 3.0), c=st.floats(-5.0, 5.0))
def test_skip_only_is_linear_in_its_inputs(dims, a, c):
    torch.manual_seed(dims["seed"])
    module, _, _ = _build("fusion", "skip_only", **dims)
    module = module.double().eval()
    assert isinstance(module, SkipOnlyFusion) and module.attention is None
    assert [n for n, _ in module.named_parameters()] == ["skip.weight"]
    gen = torch.Generator().manual_seed(dims["seed"])
    x_i, x_m = _random_pair(dims, gen)
    y_i, y_m = _random_pair(dims, gen)
    mixed = module(a * x_i + (1 - a) * y_i, a * x_m + (1 - a) * y_m)
    torch.testing.assert_close(mixed, a * module(x_i, x_m) + (1 - a) * module(y_i, y_m))
    torch.testing.assert_close(module(c * x_i, c * x_m), c * module(x_i, x_m))
    torch.testing.assert_close(module(0 * x_i, 0 * x_m), torch.zeros_like(mixed))
    expected = _mmfa_reference(module, x_i, x_m, "relu", attention=False, skip=True)
    torch.testing.assert_close(module(x_i, x_m), expected)


def test_mmfa_is_its_skip_path_plus_its_attention_path():
    """Eq 11 splits into the two ablations when they share MMFA's weights."""
    torch.manual_seed(0)
    dims = dict(image_dim=9, meta_dim=5, attention_heads=3, head_dim=4, out_dim=7)
    full = MMFAFusion(**dims, activation="tanh").double()
    attention = AttentionOnlyFusion(**dims, activation="tanh").double()
    skip = SkipOnlyFusion(image_dim=9, meta_dim=5, out_dim=7).double()
    state = full.state_dict()
    attention.load_state_dict({k: v for k, v in state.items() if not k.startswith("skip.")})
    skip.load_state_dict({k: v for k, v in state.items() if k.startswith("skip.")})
    f_i, f_m = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(full(f_i, f_m), skip(f_i, f_m) + attention(f_i, f_m))
    # and the attention path really mixes the modalities: f_IM's attention part depends on f_M
    assert not torch.allclose(attention(f_i, f_m), attention(f_i, f_m + 1.0))


def test_mmfa_needs_a_path():
    with pytest.raises(ValueError, match="^MMFA needs the attention path, the skip path, or both$"):
        MMFAFusion(image_dim=3, meta_dim=3, use_attention=False, use_skip=False)


@settings(max_examples=15)
@given(dims=fusion_dims)
def test_concat_is_concatenation(dims):
    module, _, _ = _build("fusion", "concat", **dims)
    f_i, f_m = _random_pair(dims, torch.Generator().manual_seed(dims["seed"]))
    assert module.out_dim == dims["image_dim"] + dims["meta_dim"]
    assert list(module.parameters()) == []
    assert torch.equal(module(f_i, f_m), torch.cat([f_i, f_m], dim=1))


# -- decisions -------------------------------------------------------------------------------
@st.composite
def decision_cases(draw):
    batch = draw(st.integers(1, 6))
    k = 3
    row = st.lists(st.booleans(), min_size=k, max_size=k).filter(any)
    present = draw(st.lists(row, min_size=batch, max_size=batch))
    return {
        "batch": batch,
        "num_classes": draw(st.integers(1, 8)),
        "hidden_dim": draw(st.integers(1, 8)),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
        "present": torch.tensor(present, dtype=torch.bool),
        "scale": draw(st.sampled_from([0.1, 1.0, 10.0, 100.0])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _logits(case, branches, dtype=torch.float64):
    gen = torch.Generator().manual_seed(case["seed"])
    return {
        b: case["scale"] * torch.randn(case["batch"], case["num_classes"], generator=gen, dtype=dtype) for b in branches
    }


def _assert_simplex(weights: torch.Tensor, present: torch.Tensor | None = None) -> None:
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[0], dtype=weights.dtype), rtol=0, atol=1e-5)
    if present is not None:
        assert (weights[~present] == 0).all()


@settings(max_examples=50)
@given(case=decision_cases(), detach=st.booleans())
def test_adf_weights_are_eq_5(case, detach):
    torch.manual_seed(case["seed"])
    module, _, _ = _build(
        "decision",
        "adf",
        num_classes=case["num_classes"],
        hidden_dim=case["hidden_dim"],
        activation=case["activation"],
        detach_logits=detach,
    )
    module = module.double()
    assert module.branches == BRANCHES
    logits = _logits(case, BRANCHES)
    present = case["present"]
    log_w = module(logits, present)
    assert log_w.shape == (case["batch"], 3)
    weights = log_w.exp()
    _assert_simplex(weights, present)

    # eq 5 by hand: s = [z_I || z_IM || z_M] (absent branches' logits zeroed), a 2-layer gate, softmax
    w1, w2 = module.gate[0], module.gate[2]
    s = torch.cat([logits[b] * present[:, i : i + 1] for i, b in enumerate(BRANCHES)], dim=1)
    scores = ACT_FN[case["activation"]](s @ w1.weight.T + w1.bias) @ w2.weight.T + w2.bias
    row_max = torch.stack([scores[i][present[i]].max() for i in range(len(scores))])
    expected = torch.exp(scores - row_max[:, None]) * present  # renormalised over present branches
    expected = expected / expected.sum(dim=1, keepdim=True)
    torch.testing.assert_close(weights, expected, rtol=1e-7, atol=1e-9)
    full = present.all(dim=1)
    torch.testing.assert_close(weights[full], scores[full].softmax(dim=1), rtol=1e-7, atol=1e-9)

    # an absent branch's logits do not matter
    changed = {b: z.clone() for b, z in logits.items()}
    for i, b in enumerate(BRANCHES):
        changed[b][~present[:, i]] += 50.0
    torch.testing.assert_close(module(changed, present), log_w)


def test_adf_detach_logits_stops_the_gates_gradient():
    case = {"batch": 4, "num_classes": 3, "scale": 1.0, "seed": 0}
    for detach in (False, True):
        torch.manual_seed(0)
        module, _, _ = _build("decision", "adf", num_classes=3, detach_logits=detach)
        logits = {b: z.float().requires_grad_(True) for b, z in _logits(case, BRANCHES).items()}
        module(logits, torch.ones(4, 3, dtype=torch.bool))[:, 0].sum().backward()
        grads = [logits[b].grad for b in BRANCHES]
        if detach:
            assert all(g is None for g in grads)
        else:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        assert module.gate[0].weight.grad.abs().sum() > 0


@settings(max_examples=40)
@given(case=decision_cases(), k=st.integers(2, 3))
def test_average_weights_are_uniform_over_present_branches(case, k):
    branches = BRANCHES[:k] if k == 3 else ("image", "meta")
    module, _, _ = _build("decision", "average", num_classes=case["num_classes"])
    module = type(module)(num_classes=case["num_classes"], branches=branches)
    present = case["present"][:, :k]
    present = present[present.any(dim=1)]
    if len(present) == 0:
        present = torch.ones(1, k, dtype=torch.bool)
    logits = {b: torch.randn(len(present), case["num_classes"]) for b in branches}
    weights = module(logits, present).exp()
    assert weights.shape == (len(present), k)
    _assert_simplex(weights, present)
    expected = present.float() / present.sum(dim=1, keepdim=True)
    torch.testing.assert_close(weights, expected)


@pytest.mark.parametrize("branch", BRANCHES)
def test_single_decision_puts_all_weight_on_its_branch(branch):
    module, spec, context = _build("decision", "single")
    assert context["branches"] == ("joint",)
    module = type(module)(num_classes=4, branches=(branch,), branch=branch)
    logits = {branch: torch.randn(5, 4)}
    out = module(logits, torch.ones(5, 1, dtype=torch.bool))
    assert out.shape == (5, 1) and torch.equal(out, torch.zeros(5, 1))
    with pytest.raises(ValueError, match="single decision"):
        type(module)(num_classes=4, branches=BRANCHES, branch=branch)
    assert type(spec).has_weights is False


@pytest.mark.parametrize("name", fk.list_components("decision"))
@settings(max_examples=15)
@given(case=decision_cases())
def test_decisions_are_batch_permutation_equivariant(name, case):
    torch.manual_seed(case["seed"])
    module, _, context = _build("decision", name, num_classes=case["num_classes"])
    branches = context["branches"]
    logits = _logits(case, branches, dtype=torch.float32)
    present = case["present"][:, : len(branches)]
    if len(branches) == 1:
        present = torch.ones(case["batch"], 1, dtype=torch.bool)
    out = module(logits, present)
    perm = torch.randperm(case["batch"], generator=torch.Generator().manual_seed(case["seed"]))
    permuted = module({b: z[perm] for b, z in logits.items()}, present[perm])
    torch.testing.assert_close(permuted, out[perm])


# -- metadata encoder ----------------------------------------------------------------------------
@settings(max_examples=25)
@given(
    batch=st.integers(1, 6),
    metadata_width=st.integers(1, 10),
    hidden=st.lists(st.integers(1, 8), max_size=3),
    out_dim=st.integers(1, 9),
    layer_norm=st.booleans(),
    activation=st.sampled_from(ACTIVATIONS),
)
def test_mlp_metadata_encoder_shapes(batch, metadata_width, hidden, out_dim, layer_norm, activation):
    torch.manual_seed(0)
    module, _, _ = _build(
        "metadata_encoder",
        "mlp",
        metadata_width=metadata_width,
        hidden_dims=tuple(hidden),
        out_dim=out_dim,
        layer_norm=layer_norm,
        activation=activation,
    )
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([metadata_width, *hidden], [*hidden, out_dim], strict=True)
    )
    assert any(isinstance(m, torch.nn.LayerNorm) for m in module.modules()) == layer_norm
    module.eval()
    x = torch.randn(batch, metadata_width)
    out = module(x)
    assert out.shape == (batch, out_dim) and (module.metadata_width, module.out_dim) == (metadata_width, out_dim)
    perm = torch.randperm(batch)
    torch.testing.assert_close(module(x[perm]), out[perm])


def test_mlp_dropout_only_in_train_mode():
    torch.manual_seed(0)
    module, _, _ = _build("metadata_encoder", "mlp", dropout=0.5, metadata_width=5)
    x = torch.randn(8, 5)
    module.eval()
    assert torch.equal(module(x), module(x))
    module.train()
    assert not torch.equal(module(x), module(x))


# -- image encoder ---------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["test_efficientnet", "test_mambaout"])
def test_timm_encoder_width_is_the_forward_width(model_name):
    import timm

    if model_name not in timm.list_models("test_*"):
        pytest.skip(f"this timm has no {model_name}")
    encoder = TimmImageEncoder(model_name=model_name, pretrained=False).eval()
    backbone = encoder.backbone
    if model_name == "test_mambaout" and backbone.head_hidden_size == backbone.num_features:
        pytest.skip("test_mambaout no longer has a hidden head layer")
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert out.shape == (2, encoder.out_dim)
    if model_name == "test_mambaout":
        assert encoder.out_dim == backbone.head_hidden_size != backbone.num_features


def test_timm_encoder_measures_width_when_the_model_does_not_say(monkeypatch):
    import timm

    real = timm.create_model

    def without_width(*args, **kwargs):
        model = real(*args, **kwargs)
        model.head_hidden_size = None
        return model

    monkeypatch.setattr(timm, "create_model", without_width)
    encoder = TimmImageEncoder(model_name="test_mambaout", pretrained=False)
    assert encoder.out_dim == 256 and encoder.training


def test_pretrained_offline_is_an_error_not_a_random_init(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(fk.PretrainedWeightsError, match="test_efficientnet.*HF_HUB_OFFLINE=1"):
        TimmImageEncoder(model_name="test_efficientnet", pretrained=True)
    # through the model builder too, from a spec that asks for weights
    spec = fk.ModelSpec.model_validate(
        {
            "modalities": ["derm"],
            "fusion": None,
            "decision": {"kind": "single", "branch": "image"},
            "loss": {"lambda_joint": 0, "lambda_meta": 0},
            "image_encoder": {"kind": "timm", "model_name": "test_efficientnet"},
        }
    )
    assert spec.image_encoder.pretrained is True
    with pytest.raises(fk.PretrainedWeightsError):
        fk.build_model(spec)


def test_pretrained_without_a_source_is_an_error():
    with pytest.raises(fk.PretrainedWeightsError, match="no pretrained weights for 'test_mambaout'"):
        TimmImageEncoder(model_name="test_mambaout", pretrained=True)


def _save(state: dict, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("model_name", ["test_efficientnet", "test_mambaout"])
@pytest.mark.parametrize("with_classifier", [False, True], ids=["features", "with-classifier"])
def test_weights_file_is_loaded_exactly(tmp_path, suffix, model_name, with_classifier):
    import timm

    torch.manual_seed(123)
    source = timm.create_model(model_name, pretrained=False, num_classes=10 if with_classifier else 0)
    with torch.no_grad():  # make every tensor distinctive, BN statistics included
        for value in source.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    state = source.state_dict()
    assert any(k.startswith(("classifier", "head.fc")) for k in state) == with_classifier
    path = _save(state, tmp_path / f"weights{suffix}")

    torch.manual_seed(0)
    encoder = TimmImageEncoder(model_name=model_name, pretrained=True, weights_file=path)
    loaded = encoder.backbone.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    assert set(state) - set(loaded) <= {k for k in state if k.startswith(("classifier", "head.fc"))}


def test_weights_file_wrapped_in_a_state_dict_key(tmp_path):
    import timm

    state = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    path = _save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    encoder = TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
    assert torch.equal(encoder.backbone.conv_stem.weight, state["conv_stem.weight"])


def test_weights_file_reaches_both_image_encoders_through_the_spec(tmp_path):
    import timm

    torch.manual_seed(5)
    state = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    path = _save(state, tmp_path / "w.safetensors")
    spec = fk.load_preset(
        "ji-adf-cd",
        {"image_encoder": {"model_name": "test_efficientnet", "weights_file": str(path)}},
    )
    model = fk.build_model(spec)
    for m in ("derm", "clinical"):
        got = model.image_stream.encoders[m].backbone.state_dict()
        assert all(torch.equal(got[k], v) for k, v in state.items())


def test_weights_file_that_does_not_fit_names_the_file(tmp_path):
    import timm

    other = _save(timm.create_model("test_resnet", num_classes=0).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(fk.PretrainedWeightsError, match=r"resnet\.pth: weights do not fit") as info:
        TimmImageEncoder(model_name="test_efficientnet", weights_file=other)
    assert str(other) in str(info.value)

    state = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    wrong_shape = _save(state, tmp_path / "shape.safetensors")
    with pytest.raises(fk.PretrainedWeightsError, match=r"shape\.safetensors: weights do not fit"):
        TimmImageEncoder(model_name="test_efficientnet", weights_file=wrong_shape)

    state = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    del state["bn1.weight"]
    partial = _save(state, tmp_path / "partial.safetensors")
    with pytest.raises(fk.PretrainedWeightsError, match=r"partial\.safetensors.*bn1\.weight"):
        TimmImageEncoder(model_name="test_efficientnet", weights_file=partial)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(fk.PretrainedWeightsError, match=r"garbage\.safetensors: cannot read"):
        TimmImageEncoder(model_name="test_efficientnet", weights_file=garbage)

    with pytest.raises(fk.PretrainedWeightsError, match=r"absent\.pth: weights file not found"):
        TimmImageEncoder(model_name="test_efficientnet", weights_file=tmp_path / "absent.pth")


@pytest.mark.parametrize(("kind", "name"), _all_components())
def test_constructor_defaults_equal_the_spec_defaults(kind, name):
    """A component built in Python without a spec gets the defaults its spec documents.

    One documented exception: ``TimmImageEncoder(pretrained=False)`` follows timm's
    ``create_model`` (no download unless asked), while the spec defaults to the paper's
    ImageNet-pretrained backbone.
    """
    import inspect

    exceptions = {("image_encoder", "timm", "pretrained")}

    entry = fk.registry(kind).get(name)
    fields = entry.spec.model_fields
    for param in inspect.signature(entry.component.__init__).parameters.values():
        field = fields.get(param.name)
        if field is None or param.default is inspect.Parameter.empty or field.is_required():
            continue
        if (kind, name, param.name) in exceptions:
            continue
        spec_default = field.default
        if isinstance(spec_default, list):
            spec_default = tuple(spec_default)
        assert param.default == spec_default, (kind, name, param.name)


def _plain_attributes(module: torch.nn.Module) -> dict:
    """Every submodule's public int/float/str/bool/tuple/None attributes, by dotted name."""
    plain = (int, float, str, bool, tuple, type(None))
    return {
        f"{prefix}.{key}": value
        for prefix, sub in module.named_modules()
        for key, value in vars(sub).items()
        if not key.startswith("_") and isinstance(value, plain)
    }


@pytest.mark.parametrize(("kind", "name"), _all_components())
def test_constructor_defaults_build_the_default_spec_component(kind, name):
    """Built with only its required arguments, a component equals the one its default spec builds.

    The signature check above reads the declared defaults; this one builds with them, so a default
    that the constructor body overrides or passes on wrongly is caught too.
    """
    import inspect

    torch.manual_seed(0)
    from_spec, spec, context = _build(kind, name)
    entry = fk.registry(kind).get(name)
    kwargs = {**spec.component_kwargs(), **context}
    if kind == "image_encoder":
        kwargs["model_name"] = TINY_MODELS.get(name, "test_efficientnet")
    params = inspect.signature(entry.component.__init__).parameters.values()
    required = {
        p.name: kwargs[p.name] for p in params if p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    }
    torch.manual_seed(0)
    from_python = entry.component(**required)
    assert repr(from_python) == repr(from_spec)
    assert _plain_attributes(from_python) == _plain_attributes(from_spec)
    python_state, spec_state = from_python.state_dict(), from_spec.state_dict()
    assert list(python_state) == list(spec_state)
    assert all(torch.equal(python_state[k], spec_state[k]) for k in spec_state)


@pytest.mark.parametrize("name", fk.list_components("decision"))
def test_decision_weights_follow_the_logits_dtype_and_device(name):
    module, _, context = _build("decision", name)
    k = len(context["branches"])
    logits = {b: torch.randn(3, CONTEXT["num_classes"], dtype=torch.float64) for b in BRANCHES}
    present = torch.ones(3, k, dtype=torch.bool)
    assert module.double()(logits, present).dtype == torch.float64
    meta = module.to("meta")({b: v.to("meta") for b, v in logits.items()}, present.to("meta"))
    assert meta.device.type == "meta" and meta.shape == (3, k)
