"""The training objective of eq 7, computed in log space.

``L_total = CE(P_final, y) + lambda_IM L_IM + lambda_I L_I + lambda_M L_M``

``CE(P_final, y) = -log P_final[y]`` where ``log P_final = logsumexp_k(log alpha_k +
log_softmax(z_k))``: the log of the convex mixture of eq 6, finite for any finite logits (the plain
``-log(sum_k alpha_k softmax(z_k)[y])`` underflows to ``inf`` once every branch is confidently wrong).
The auxiliary terms (eq 4) average over the samples that have the branch (missing modalities).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fusionkit.model import FusionOutput
from fusionkit.specs.model import LossSpec


@dataclass
class LossBreakdown:
    """The total loss of eq 7 and its terms (``final`` is CE(P_final, y); the rest are eq 4)."""

    total: torch.Tensor
    final: torch.Tensor
    terms: dict[str, torch.Tensor]


class JointIndividualLoss(nn.Module):
    """Eq 7 with the auxiliary weights of a :class:`~fusionkit.specs.LossSpec`."""

    def __init__(
        self,
        *,
        lambda_joint: float = 0.5,
        lambda_image: float = 0.25,
        lambda_meta: float = 0.25,
        class_weights: torch.Tensor | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        self.lambdas = {"joint": lambda_joint, "image": lambda_image, "meta": lambda_meta}
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    @classmethod
    def from_spec(cls, spec: LossSpec) -> JointIndividualLoss:
        """The loss a spec describes."""
        return cls(
            lambda_joint=spec.lambda_joint,
            lambda_image=spec.lambda_image,
            lambda_meta=spec.lambda_meta,
            class_weights=spec.class_weights,
        )

    def _nll(self, log_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is not None:
            if not bool(mask.any()):
                return log_probs.sum() * 0.0
            log_probs, target = log_probs[mask], target[mask]
        return F.nll_loss(log_probs, target, weight=self.class_weights)

    def forward(self, output: FusionOutput, target: torch.Tensor) -> LossBreakdown:
        """The loss for a batch's output and its class-index targets (B,)."""
        final = self._nll(output.log_probs, target)
        total = final
        terms = {}
        for branch, weight in self.lambdas.items():
            if weight <= 0 or branch not in output.logits:
                continue
            term = self._nll(
                output.logits[branch].log_softmax(dim=-1), target, output.present.get(branch)
            )
            terms[branch] = term
            total = total + weight * term
        return LossBreakdown(total=total, final=final, terms=terms)
