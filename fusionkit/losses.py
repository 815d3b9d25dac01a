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

    def _nll(
        self, log_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class-weighted mean of the cross-entropy over the samples in ``mask``.

        ``target`` is class indices (n,) or soft targets (n, N) (mixup/cutmix:
        ``-sum_k t_k w_k log p_k`` over ``sum_k t_k w_k``, ``w`` the class weights); a one-hot soft target
        gives the index loss. Written without data-dependent shapes or host syncs (no boolean
        indexing, no ``.item()``), so the whole training step can be captured in a CUDA graph. A
        batch where no sample has the branch contributes 0. For indices this equals
        ``F.nll_loss(..., weight=class_weights)`` on the masked rows.
        """
        if target.is_floating_point():  # soft targets: class k weighted by t_k w_k
            t = target.to(log_probs.dtype)
            if self.class_weights is not None:
                t = t * self.class_weights.to(log_probs.dtype)
            per_sample, weight = -(t * log_probs).sum(dim=1), t.sum(dim=1)
        else:
            per_sample = -log_probs.gather(1, target[:, None])[:, 0]
            weight = torch.ones_like(per_sample)
            if self.class_weights is not None:
                weight = self.class_weights.to(per_sample.dtype)[target]
            per_sample = weight * per_sample
        if mask is not None:
            mask = mask.to(per_sample.dtype)
            per_sample, weight = per_sample * mask, weight * mask
        return per_sample.sum() / weight.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)

    def forward(self, output: FusionOutput, target: torch.Tensor) -> LossBreakdown:
        """The loss for a batch's output and its targets: class indices (B,) or soft targets (B, N)."""
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
