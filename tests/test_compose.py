"""FusionModel composed from built modules (no registry): forward, eq 7, checks at construction."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_SIZE, METADATA_WIDTH, build_tiny, make_batch, tiny_spec
from torch import nn

import fusionkit as fk
from fusionkit.components.decisions.adf import ADFDecision
from fusionkit.components.decisions.average import AverageDecision
from fusionkit.components.image_encoders import TimmImageEncoder
from fusionkit.components.metadata_encoders import MLPMetadataEncoder
from fusionkit.data import ImagePreprocessing
from fusionkit.specs import BRANCHES

pytestmark = pytest.mark.trains  # asserts on what trained (or stepped) models compute

N = 5


class GatedProduct(nn.Module):
    """A one-off fusion block defined here and never registered: f_IM = tanh(A f_I) * sigmoid(B f_M)."""

    def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, out_dim)
        self.meta = nn.Linear(meta_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, f_image: torch.Tensor, f_meta: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.image(f_image)) * torch.sigmoid(self.meta(f_meta))


class TinyEncoder(nn.Module):
    """A plugin-style image encoder (not a timm model) that declares its own preprocessing."""

    def __init__(self, *, out_dim: int = 6, mean=(0.2, 0.3, 0.4), std=(0.3, 0.2, 0.1)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_dim, 3)
        self.out_dim = out_dim
        self.declared = ImagePreprocessing(input_size=48, mean=mean, std=std, interpolation="bilinear")

    @property
    def preprocessing(self) -> ImagePreprocessing:
        return self.declared

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images).mean(dim=(2, 3))


def _timm() -> TimmImageEncoder:
    return TimmImageEncoder(model_name="test_efficientnet", pretrained=False)


def _parts(**changes):
    """The keyword arguments of a small composed model (two timm encoders, the custom block, adf)."""
    derm, clinical = _timm(), _timm()
    width = derm.out_dim
    parts = dict(
        num_classes=N,
        image_encoders={"derm": derm, "clinical": clinical},
        metadata_encoder=MLPMetadataEncoder(metadata_width=METADATA_WIDTH, out_dim=12, hidden_dims=(16,)),
        fusion=GatedProduct(image_dim=2 * width, meta_dim=12, out_dim=10),
        decision=ADFDecision(num_classes=N, branches=BRANCHES, hidden_dim=8),
        image_size=IMAGE_SIZE,
    )
    parts.update(changes)
    return parts


def test_an_unregistered_fusion_block_trains_end_to_end_with_the_joint_individual_loss():
    torch.manual_seed(0)
    model = fk.FusionModel(**_parts())
    assert "gated_product" not in fk.list_components("fusion")
    assert model.spec is None  # composed from modules: nothing to rebuild it from without this code
    assert model.modalities == ("derm", "clinical", "meta") and model.decision_branches == BRANCHES
    assert model.feature_dims == {"image": 2 * model.image_stream.width, "meta": 12, "joint": 10}
    assert set(model.heads) == set(BRANCHES) and model.has_weights and model.metadata_width == METADATA_WIDTH
    spec = tiny_spec()
    batch = make_batch(spec, 4, present={"derm": [1, 1, 0, 1], "clinical": [1, 0, 1, 1], "meta": [1, 1, 1, 0]})
    out = model(batch)
    assert out.probs.shape == (4, N) and out.features["joint"].shape == (4, 10)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(4), rtol=0, atol=1e-5)
    assert (out.weights[3, BRANCHES.index("meta")] == 0).item()  # absent metadata: no meta weight (eq 5)
    loss = fk.JointIndividualLoss()(out, torch.tensor([0, 1, 2, 3]))
    assert set(loss.terms) == set(BRANCHES)
    loss.total.backward()
    block = model.fusion
    assert isinstance(block, GatedProduct)
    assert block.image.weight.grad is not None and block.image.weight.grad.abs().sum() > 0
    assert model.image_stream.encoders["derm"].backbone.conv_stem.weight.grad is not None
    # one optimiser step changes the block's output: it is trained, not just run
    before = block(out.features["image"].detach(), out.features["meta"].detach()).detach()
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    after = block(out.features["image"].detach(), out.features["meta"].detach())
    assert not torch.allclose(before, after)


def test_composing_the_modules_a_spec_builds_gives_the_spec_models_layout_and_outputs():
    """Same state-dict keys as the spec path, so a spec model's checkpoint loads into a composed one."""
    spec = tiny_spec(fusion={"kind": "concat"})
    built = build_tiny(spec).eval()
    encoder = built.image_stream.encoders
    composed = fk.FusionModel(
        num_classes=spec.num_classes,
        image_encoders={"derm": _timm(), "clinical": _timm()},
        metadata_encoder=MLPMetadataEncoder(metadata_width=METADATA_WIDTH, out_dim=12, hidden_dims=(16,)),
        fusion=fk.registry("fusion")
        .get("concat")
        .component(image_dim=built.feature_dims["image"], meta_dim=built.feature_dims["meta"]),
        decision=ADFDecision(num_classes=spec.num_classes, branches=BRANCHES, hidden_dim=8),
        image_size=IMAGE_SIZE,
    ).eval()
    assert list(composed.state_dict()) == list(built.state_dict())
    composed.load_state_dict(built.state_dict())
    batch = make_batch(spec, 3)
    with torch.no_grad():
        torch.testing.assert_close(composed(batch).probs, built(batch).probs)
    assert built.spec == spec and composed.spec is None
    assert composed.preprocessing == built.preprocessing == encoder["derm"].preprocessing.with_size(IMAGE_SIZE)


def test_the_same_encoder_under_both_images_is_one_shared_backbone():
    shared = _timm()
    model = fk.FusionModel(**_parts(image_encoders={"derm": shared, "clinical": shared}))
    assert list(model.image_stream.encoders) == ["shared"] and model.image_stream.shared
    spec_model = build_tiny(
        tiny_spec(
            image_encoder={"kind": "timm", "model_name": "test_efficientnet", "pretrained": False, "shared": True}
        )
    )
    assert [k for k in model.state_dict() if k.startswith("image_stream")] == [
        k for k in spec_model.state_dict() if k.startswith("image_stream")
    ]


def test_a_metadata_only_model_needs_no_preprocessing_and_defaults_heads_and_weights():
    meta = MLPMetadataEncoder(metadata_width=METADATA_WIDTH, out_dim=4, hidden_dims=())
    model = fk.FusionModel(
        num_classes=N,
        metadata_encoder=meta,
        decision=fk.registry("decision").get("single").component(num_classes=N, branches=("meta",), branch="meta"),
    )
    assert model.modalities == ("meta",) and model.preprocessing is None and model.image_size is None
    assert model.metadata_width == METADATA_WIDTH  # read from the encoder's metadata_width
    assert not model.has_weights  # one branch: nothing to report
    out = model({"meta": torch.randn(2, METADATA_WIDTH)})
    assert out.weights is None and out.probs.shape == (2, N)


def test_the_image_size_defaults_to_what_the_encoders_declare():
    model = fk.FusionModel(
        num_classes=N,
        image_encoders={"derm": TinyEncoder()},
        decision=AverageDecision(num_classes=N, branches=("image",)),
        has_weights=False,
    )
    assert model.image_size == 48
    assert model.preprocessing == ImagePreprocessing(48, (0.2, 0.3, 0.4), (0.3, 0.2, 0.1), "bilinear")


class NoWidth(nn.Module):
    def forward(self, x):
        return x


class NoPreprocessing(nn.Module):
    out_dim = 4

    def forward(self, x):
        return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]


def _error(**changes) -> str:
    with pytest.raises(fk.ConfigError) as info:
        fk.FusionModel(**_parts(**changes))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_width_mismatches_are_one_line_errors_at_construction():
    width = _timm().out_dim
    assert _error(fusion=GatedProduct(image_dim=width, meta_dim=12, out_dim=10)).startswith(
        f"fusion block (GatedProduct) does not accept f_I of width {2 * width} and f_M of width 12: RuntimeError: "
    )
    assert _error(
        metadata_encoder=MLPMetadataEncoder(metadata_width=METADATA_WIDTH, out_dim=9), metadata_width=METADATA_WIDTH
    ).startswith(f"fusion block (GatedProduct) does not accept f_I of width {2 * width} and f_M of width 9")
    assert _error(metadata_encoder=MLPMetadataEncoder(metadata_width=3, out_dim=12), metadata_width=METADATA_WIDTH) == (
        f"metadata_width is {METADATA_WIDTH} but the metadata encoder's metadata_width is 3"
    )
    assert _error(fusion=NoWidth()) == (
        "fusion block (NoWidth) reports no out_dim: set an int `out_dim` attribute (its output width); got None"
    )
    assert _error(heads={"image": nn.Linear(2 * width, N)}) == (
        "the 'image' head (Linear) reports no out_dim: set an int `out_dim` attribute (its output width); got None"
    )
    wrong = fk.model.ClassifierHead(in_dim=2 * width, num_classes=N + 1)
    assert _error(heads={"image": wrong}) == f"the 'image' head has out_dim {N + 1}; expected num_classes = {N}"
    short = fk.model.ClassifierHead(in_dim=width, num_classes=N)
    assert _error(heads={"image": short}).startswith(
        f"the 'image' head (ClassifierHead) does not accept features of width {2 * width}: RuntimeError: "
    )
    assert _error(heads={"image": fk.model.ClassifierHead(in_dim=2 * width, num_classes=N)}) == (
        "the decision combines the 'joint' branch, which has no head (heads: ['image'])"
    )
    assert _error(image_encoders={"derm": _timm(), "clinical": TinyEncoder()}) == (
        f"the image encoders report different out_dim {{'derm': {width}, 'clinical': 6}}; f_I needs one width"
    )


def test_missing_declarations_and_bad_combinations_are_one_line_errors():
    message = _error(image_encoders={"derm": NoPreprocessing()})
    assert message == (
        "image encoder for 'derm' (test_compose.NoPreprocessing) declares no preprocessing: give it a "
        "`preprocessing` property returning fusionkit.data.ImagePreprocessing(input_size=..., mean=..., "
        "std=..., interpolation=...)"
    )
    assert _error(image_encoders={"derm": TinyEncoder(), "clinical": TinyEncoder(mean=(0.5, 0.5, 0.5))}) == (
        "the image encoders declare different preprocessing (derm: mean (0.2, 0.3, 0.4), std (0.3, 0.2, 0.1), "
        "bilinear; clinical: mean (0.5, 0.5, 0.5), std (0.3, 0.2, 0.1), bilinear); both images go through one "
        "transform, so use encoders that agree"
    )
    assert _error(image_encoders={"face": _timm()}) == (
        "image_encoders must map image modalities ['derm', 'clinical'] to encoders; got ['face']"
    )
    assert _error(metadata_encoder=None) == (
        "the fusion block fuses image and metadata features, but the model has only ['derm', 'clinical']; "
        "drop the fusion block or add the missing encoder"
    )
    assert _error(decision=nn.Identity()) == (
        "the decision (Identity) has no `branches`: set the tuple of branch names it combines "
        "(from ['image', 'joint', 'meta'])"
    )
    assert _error(num_classes=0) == "num_classes must be a positive int, got 0"
    assert _error(modality_dropout=1.0) == "modality_dropout must be in [0, 1), got 1.0"
    with pytest.raises(fk.ConfigError, match="needs a spec, or num_classes= and decision="):
        fk.FusionModel(image_encoders={"derm": _timm()})
    with pytest.raises(fk.ConfigError, match=r"give a spec or built modules, not both \(got a spec and fusion\)"):
        fk.FusionModel(
            tiny_spec(), metadata_width=METADATA_WIDTH, fusion=GatedProduct(image_dim=1, meta_dim=1, out_dim=1)
        )


def test_from_spec_is_build_model():
    spec = tiny_spec()
    assert fk.FusionModel(spec.to_dict(), metadata_width=METADATA_WIDTH).spec == spec  # the 0.1 positional form
    with pytest.raises(fk.ConfigError, match=r"not both \(got a spec and combine, modality_dropout\)"):
        fk.FusionModel(spec, metadata_width=METADATA_WIDTH, combine="mean", modality_dropout=0.2)
    torch.manual_seed(0)
    a = fk.FusionModel.from_spec(spec.to_dict(), metadata_width=METADATA_WIDTH)
    b = build_tiny(spec)
    assert a.spec == b.spec == spec
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_a_pipeline_of_a_composed_model_refuses_to_save_in_one_line(tmp_path):
    """Issue 22 item 6: a saved folder is rebuilt from its spec; a model composed from modules has none."""
    from fusionkit.data import ImagePreprocessing
    from fusionkit.inference.decision import DecisionRecord
    from fusionkit.runtime.config import RunConfig

    model = fk.FusionModel(**_parts())
    pipe = fk.FusionPipeline(
        model=model,
        encoder=None,
        preprocessing=ImagePreprocessing(input_size=IMAGE_SIZE, mean=(0.5,) * 3, std=(0.25,) * 3),
        decision=DecisionRecord(rule="probs", class_names=tuple(str(i) for i in range(N))),
        run_config=RunConfig.model_validate({"model": tiny_spec().to_dict()}),
        device="cpu",
    )
    with pytest.raises(fk.ConfigError, match=r"composed from modules \(FusionModel\(...\), no spec\)") as refused:
        pipe.save(tmp_path / "saved")
    assert "\n" not in str(refused.value) and not (tmp_path / "saved").exists()
