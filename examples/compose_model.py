"""Compose JI-ADF from spec classes in Python, run one forward pass and the eq-7 loss.

    python examples/compose_model.py            # prints what the model returns

No data, no download: timm's tiny ``test_efficientnet`` with random weights, on the CPU.
"""

from __future__ import annotations

import torch

import fusionkit as fk
from fusionkit.specs import (
    ADFDecisionSpec,
    LossSpec,
    MLPMetadataEncoderSpec,
    MMFASpec,
    ModelSpec,
    TimmImageEncoderSpec,
)


def main() -> None:
    """Build the model, run a batch of four lesions through it, print the outputs and the loss."""
    torch.manual_seed(0)
    spec = ModelSpec(
        name="my-ji-adf",
        modalities=("derm", "clinical", "meta"),
        image_size=64,
        image_encoder=TimmImageEncoderSpec(model_name="test_efficientnet", pretrained=False),
        metadata_encoder=MLPMetadataEncoderSpec(out_dim=256),
        fusion=MMFASpec(attention_heads=4, head_dim=32, out_dim=256),  # eqs 8-11
        decision=ADFDecisionSpec(hidden_dim=64),  # eq 5
        loss=LossSpec(lambda_joint=0.5, lambda_image=0.25, lambda_meta=0.25),  # eq 7
    )
    model = fk.build_model(spec, metadata_width=35)
    print("feature widths:", model.feature_dims)

    batch = {
        "derm": torch.randn(4, 3, 64, 64),
        "clinical": torch.randn(4, 3, 64, 64),
        "meta": torch.randn(4, 35),
    }
    out = model(batch)
    print(
        "P_final (eq 6):", tuple(out.probs.shape), "rows sum to", [round(x, 4) for x in out.probs.sum(dim=1).tolist()]
    )
    print("ADF weights (alpha_I, alpha_IM, alpha_M) (eq 5):", [round(x, 4) for x in out.weights[0].tolist()])
    print("branch logits:", {k: tuple(v.shape) for k, v in out.logits.items()})

    loss = fk.JointIndividualLoss.from_spec(spec.loss)(out, torch.tensor([0, 3, 7, 1]))
    loss.total.backward()
    print(f"loss (eq 7): total {loss.total.item():.4f}, final CE {loss.final.item():.4f}")
    print("auxiliary terms (eq 4):", {k: round(v.item(), 4) for k, v in loss.terms.items()})

    # a preset gives the same architecture in one line; the decision is one override away
    tiny = {"image_encoder": {"model_name": "test_efficientnet", "pretrained": False}}
    ji_mmfa = fk.load_preset("ji-adf", {**tiny, "decision": {"kind": "average"}})
    print("preset variant:", ji_mmfa.name, ji_mmfa.fusion.kind, ji_mmfa.decision.kind)


if __name__ == "__main__":
    main()
