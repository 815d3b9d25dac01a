"""The training objective of eq 7, computed in log space.

``L_total = CE(P_final, y) + lambda_IM L_IM + lambda_I L_I + lambda_M L_M``

``CE(P_final, y) = -log P_final[y]`` where ``log P_final = logsumexp_k(log alpha_k +
log_softmax(z_k))``: the log of the convex mixture of eq 6, finite for any finite logits (the plain
``-log(sum_k alpha_k softmax(z_k)[y])`` underflows to ``inf`` once every branch is confidently wrong).
The auxiliary terms (eq 4) average over the samples that have the branch (missing modalities).

Every term goes through one function, :func:`cross_entropy`, so the long-tail options of
:class:`~fusionkit.specs.LossSpec` (focal gamma, label smoothing, logit adjustment by the training
class prior) and soft targets (mixup/cutmix) apply to the final and the auxiliary terms alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fusionkit.errors import ConfigError
from fusionkit.model import FusionOutput
from fusionkit.specs.model import LossSpec


@dataclass
class LossBreakdown:
    """The total loss of eq 7 and its terms (``final`` is CE(P_final, y); the rest are eq 4)."""

    total: torch.Tensor
    final: torch.Tensor
    terms: dict[str, torch.Tensor]


def cross_entropy(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
    label_smoothing: float = 0.0,
    log_prior: torch.Tensor | None = None,
    logit_adjustment: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One cross-entropy term of eq 7 with the long-tail options; a scalar.

    ``log_probs`` (n, N) are log-probabilities (a branch's ``log_softmax(z_k)`` or ``log P_final``);
    ``target`` is either class indices (n,) int64 or soft targets (n, N) float (rows sum to 1).

    - logit adjustment (Menon et al. 2021): scores ``log_softmax(log_probs + tau log pi)``;
    - label smoothing: ``t = (1 - epsilon) t + epsilon / N``;
    - focal loss (Lin et al. 2017): per sample ``-sum_c t_c (1 - p_c)^gamma log p_c``;
    - ``class_weights`` w weight class c's term by ``w_c``; the sum over the samples in ``mask`` is
      divided by ``sum_i sum_c w_c t_ic`` of the unsmoothed targets (mixup/cutmix: class k weighted
      by ``t_k w_k``).

    With every option off and index targets this is ``F.nll_loss(log_probs, target,
    weight=class_weights)`` over the masked rows; a one-hot soft target gives the index loss. Written without data-dependent shapes or host
    syncs (no boolean indexing, no ``.item()``), so the training step can be captured in a CUDA
    graph; a batch where no sample is in ``mask`` contributes 0.
    """
    n_classes = log_probs.shape[-1]
    if target.ndim == 1:
        target = nn.functional.one_hot(target, n_classes).to(log_probs.dtype)
    else:
        target = target.to(log_probs.dtype)
    if logit_adjustment and log_prior is not None:
        log_probs = (log_probs + logit_adjustment * log_prior.to(log_probs.dtype)).log_softmax(dim=-1)
    smoothed = target
    if label_smoothing:
        smoothed = (1.0 - label_smoothing) * target + label_smoothing / n_classes
    per_class = -log_probs
    if focal_gamma:
        per_class = per_class * (-log_probs.exp().clamp(max=1.0)).add(1.0).pow(focal_gamma)
    if class_weights is not None:
        w = class_weights.to(log_probs.dtype)
        smoothed, target = smoothed * w, target * w
    per_sample, weight = (smoothed * per_class).sum(dim=-1), target.sum(dim=-1)
    if mask is not None:
        mask = mask.to(per_sample.dtype)
        per_sample, weight = per_sample * mask, weight * mask
    return per_sample.sum() / weight.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)


class JointIndividualLoss(nn.Module):
    """Eq 7 with the auxiliary weights and long-tail options of a :class:`~fusionkit.specs.LossSpec`."""

    class_weights: torch.Tensor | None
    """Buffer: the per-class weights w of the cross-entropy (None: unweighted)."""
    log_prior: torch.Tensor | None
    """Buffer: log pi, the normalised log class prior of logit adjustment (None without one)."""

    def __init__(
        self,
        *,
        lambda_joint: float = 0.5,
        lambda_image: float = 0.25,
        lambda_meta: float = 0.25,
        class_weights: torch.Tensor | tuple[float, ...] | None = None,
        focal_gamma: float = 0.0,
        label_smoothing: float = 0.0,
        logit_adjustment: float = 0.0,
        class_prior: torch.Tensor | tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        if logit_adjustment > 0 and class_prior is None:
            raise ConfigError(
                "loss.logit_adjustment needs loss.class_prior (the training class frequencies; the "
                "trainer fills it in from the training split)"
            )
        self.lambdas = {"joint": lambda_joint, "image": lambda_image, "meta": lambda_meta}
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.logit_adjustment = logit_adjustment
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)
        log_prior = None
        if class_prior is not None:
            prior = torch.as_tensor(class_prior, dtype=torch.float32)
            log_prior = (prior / prior.sum()).log()
        self.register_buffer("log_prior", log_prior, persistent=False)

    @classmethod
    def from_spec(cls, spec: LossSpec) -> JointIndividualLoss:
        """The loss a spec describes."""
        return cls(
            lambda_joint=spec.lambda_joint,
            lambda_image=spec.lambda_image,
            lambda_meta=spec.lambda_meta,
            class_weights=spec.class_weights,
            focal_gamma=spec.focal_gamma,
            label_smoothing=spec.label_smoothing,
            logit_adjustment=spec.logit_adjustment,
            class_prior=spec.class_prior,
        )

    def _ce(self, log_probs: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return cross_entropy(
            log_probs,
            target,
            class_weights=self.class_weights,
            focal_gamma=self.focal_gamma,
            label_smoothing=self.label_smoothing,
            log_prior=self.log_prior,
            logit_adjustment=self.logit_adjustment,
            mask=mask,
        )

    if TYPE_CHECKING:  # nn.Module.__call__ runs forward (with hooks); this gives it forward's types

        def __call__(self, output: FusionOutput, target: torch.Tensor) -> LossBreakdown: ...

    def forward(self, output: FusionOutput, target: torch.Tensor) -> LossBreakdown:
        """The loss for a batch's output and its targets: class indices (B,) or soft targets (B, N)."""
        final = self._ce(output.log_probs, target)
        total = final
        terms = {}
        for branch, weight in self.lambdas.items():
            if weight <= 0 or branch not in output.logits:
                continue
            term = self._ce(output.logits[branch].log_softmax(dim=-1), target, output.present.get(branch))
            terms[branch] = term
            total = total + weight * term
        return LossBreakdown(total=total, final=final, terms=terms)
