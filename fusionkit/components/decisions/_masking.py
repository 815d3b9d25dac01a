"""Helpers shared by the decision heads: masking log weights to the branches present."""

from __future__ import annotations

import torch


def masked_log_softmax(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``log softmax`` over the present entries of each row; absent entries get ``-inf``.

    This renormalises the weights over the branches a sample has. Rows with no branch present are
    the caller's error to report (they come out as NaN here).
    """
    return scores.masked_fill(~present, float("-inf")).log_softmax(dim=-1)
