"""The training recipe of Appendix A.2, pinned: what the optimizer, the scheduler, checkpoint
selection, class weighting, balanced sampling and the quick-run fields actually do.

The trainer is driven through its public surface (construction, ``fit()``, ``optimizer``,
``scheduler``, ``step``, ``data``'s loaders, ``history.json``, ``checkpoints/best.safetensors``);
validation scores are scripted (``validate`` replaced on the instance) so checkpoint selection and
the scheduler are tested on a known sequence, and each epoch trains one batch of a tiny backbone.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from train_helpers import tiny_run_config

from fusionkit.data import CLASS_NAMES
from fusionkit.runtime.checkpoint import model_state, read_checkpoint
from fusionkit.runtime.config import RunConfig
from fusionkit.train.sampler import EpochSampler
from fusionkit.train.trainer import Trainer

# A validation macro-Dice sequence that rises, falls, ties its best and rises again. With
# ReduceLROnPlateau(mode="max", patience=1, factor=0.5, min_lr=4e-4) from lr 1e-3 (torch's default
# relative threshold 1e-4, so a tie is no improvement):
#   epoch      1     2     3     4      5     6     7
#   dice      .20   .50   .30   .50    .60   .40   .40
#   bad        0     0     1     2->0   0     1     2->0
#   lr        1e-3  1e-3  1e-3  5e-4   5e-4  5e-4  4e-4 (2.5e-4 clamped to min_lr)
#   best       *     *                  *
SCORES = (0.20, 0.50, 0.30, 0.50, 0.60, 0.40, 0.40)
EXPECTED_LR = (1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 4e-4)
EXPECTED_BEST = (True, True, False, False, True, False, False)
GRAD_CLIP = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def class_weights_of():
    """The inverse-frequency weighting, by its private name (the one place a rename touches)."""
    from fusionkit.train.data_setup import _class_weights

    return _class_weights


def _trainer(run_dir: Path, cache_dir: Path, **train: Any) -> Trainer:
    config = RunConfig.model_validate(tiny_run_config(cache_dir, n_lesions=40, **train))
    return Trainer(config, run_dir=run_dir, synthetic=True, progress=False)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, cache_dir) -> Iterator[dict[str, Any]]:
    """One 7-epoch run (one batch per epoch) whose validation scores are SCORES.

    Records the model weights at each validation, the gradient norm seen by every optimizer step
    (an AdamW pre-step hook) and the optimizer as constructed.
    """
    trainer = _trainer(
        tmp_path_factory.mktemp("scripted") / "run",
        cache_dir,
        epochs=len(SCORES),
        lr=1e-3,
        weight_decay=3e-4,
        max_batches_per_epoch=1,
        grad_clip=GRAD_CLIP,
        class_weighting="inverse_frequency",
        scheduler={"factor": 0.5, "patience": 1, "min_lr": 4e-4},
    )
    snapshots: list[dict[str, torch.Tensor]] = []
    grad_norms: list[float] = []

    def validate() -> tuple[dict[str, Any], float]:
        epoch = len(snapshots)
        snapshots.append({k: v.clone() for k, v in model_state(trainer.model).items()})
        return {"macro": {"dice": SCORES[epoch], "auc": 0.5 + epoch / 100}}, 1.0 + epoch

    def record_grad_norm(optimizer, args, kwargs) -> None:  # noqa: ARG001
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    trainer.validate = validate
    trainer.optimizer.register_step_pre_hook(record_grad_norm)
    try:
        history = trainer.fit()
        yield {"trainer": trainer, "history": history, "snapshots": snapshots, "grad_norms": grad_norms}
    finally:
        trainer.close()


@pytest.mark.trains
# -- checkpoint selection (Appendix A.2: the epoch with the highest validation macro F1) -----------
def test_best_checkpoint_is_the_epoch_with_the_highest_validation_score(scripted) -> None:
    trainer, history = scripted["trainer"], scripted["history"]
    assert [r["val_dice"] for r in history] == list(SCORES)
    # a tie with the best so far is not a new best: the earlier epoch is kept
    assert tuple(r["best"] for r in history) == EXPECTED_BEST
    assert json.loads((trainer.run_dir / "history.json").read_text()) == history
    tensors, meta = read_checkpoint(trainer.run_dir / "checkpoints" / "best.safetensors")
    best_epoch = SCORES.index(max(SCORES)) + 1
    assert meta["info"]["epoch"] == best_epoch == 5
    assert meta["info"]["val_metrics"]["macro"]["dice"] == max(SCORES)
    assert meta["info"]["val_loss"] == 1.0 + (best_epoch - 1)
    kept = scripted["snapshots"][best_epoch - 1]
    later = scripted["snapshots"][-1]
    assert any(not torch.equal(kept[k], later[k]) for k in kept)  # training moved on after epoch 5
    for key, value in kept.items():
        assert torch.equal(tensors[f"model.{key}"], value), key
    _, last = read_checkpoint(trainer.run_dir / "checkpoints" / "last.safetensors")
    assert last["info"]["best_score"] == max(SCORES)


@pytest.mark.trains
# -- ReduceLROnPlateau on the validation score (mode max) -------------------------------------------
def test_scheduler_halves_the_lr_only_after_patience_epochs_without_improvement(scripted) -> None:
    trainer, history = scripted["trainer"], scripted["history"]
    assert [r["lr"] for r in history] == pytest.approx(list(EXPECTED_LR), rel=1e-9)
    assert trainer.scheduler.kind == "plateau"
    scheduler = trainer.scheduler.scheduler  # the torch scheduler behind fusionkit's LrSchedule
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.mode == "max" and scheduler.factor == 0.5 and scheduler.patience == 1
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx(
        [EXPECTED_LR[-1]] * len(trainer.optimizer.param_groups)
    )


@pytest.mark.trains
# -- AdamW with the configured lr, weight decay and parameter groups --------------------------------
def test_optimizer_is_adamw_over_every_parameter_once(scripted) -> None:
    trainer = scripted["trainer"]
    optimizer = trainer.optimizer
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["weight_decay"] == 3e-4
    assert all(g["weight_decay"] == 3e-4 for g in optimizer.param_groups)
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in trainer.model.parameters()}


def test_recipe_defaults_are_appendix_a2() -> None:
    train = RunConfig.model_validate({"model": {"preset": "ji-adf"}}).train
    assert (train.epochs, train.batch_size, train.lr, train.weight_decay) == (50, 16, 1e-4, 1e-5)
    assert (train.class_weighting, train.sampler, train.grad_clip) == ("none", "shuffle", None)
    assert train.scheduler.kind == "plateau"


@pytest.mark.trains
# -- max_batches_per_epoch and grad_clip --------------------------------------------------------------
def test_max_batches_per_epoch_caps_the_optimizer_steps(scripted) -> None:
    trainer = scripted["trainer"]
    assert len(trainer.data.train_loader(epoch=0)) > 1  # a whole epoch would be several batches
    assert len(scripted["grad_norms"]) == len(SCORES)  # one optimizer step per epoch


@pytest.mark.trains
def test_grad_clip_bounds_the_gradient_norm_of_every_step(scripted) -> None:
    # clip_grad_norm_ rescales to exactly the cap (up to its 1e-6 epsilon); unclipped, the tiny
    # model's gradient norm is orders of magnitude larger
    assert scripted["grad_norms"] == pytest.approx([GRAD_CLIP] * len(SCORES), rel=1e-2)


# -- inverse-frequency class weights, n / (k * n_c), in every cross-entropy term of eq 7 --------------
def test_inverse_frequency_weights_on_a_known_label_set(class_weights_of) -> None:
    labels = (0, 0, 0, 0, 1, 1, 2, 5)
    k = len(CLASS_NAMES)
    expected = [8 / (k * 4), 8 / (k * 2), 8 / k, 1.0, 1.0, 8 / k] + [1.0] * (k - 6)
    assert list(class_weights_of(labels)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.trains
def test_trainer_loss_carries_the_training_split_class_weights(scripted) -> None:
    trainer = scripted["trainer"]
    labels = trainer.data.train_set.labels
    counts, n, k = Counter(labels), len(labels), len(CLASS_NAMES)
    expected = [n / (k * counts[c]) if counts[c] else 1.0 for c in range(k)]
    assert min(expected) < 1.0 < max(expected)  # the split is imbalanced: weighting matters
    assert list(trainer.config.model.loss.class_weights) == pytest.approx(expected)
    assert trainer.step.loss_fn is trainer.loss_fn
    assert trainer.loss_fn.class_weights.tolist() == pytest.approx(expected)
    # every term of eq 7 is the class-weighted mean: check on logits where the terms differ
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor(sorted(set(labels)))
    logits = {b: torch.randn(len(target), k, generator=gen) for b in ("image", "joint", "meta")}
    log_probs = torch.randn(len(target), k, generator=gen).log_softmax(-1)
    from fusionkit.model import FusionOutput

    out = FusionOutput(probs=log_probs.exp(), logits=logits, log_probs=log_probs, weights=None)
    loss = trainer.loss_fn(out, target)
    w = torch.tensor(expected)[target]
    rows = torch.arange(len(target))

    def weighted(lp: torch.Tensor) -> torch.Tensor:
        return (w * -lp[rows, target]).sum() / w.sum()

    torch.testing.assert_close(loss.final, weighted(log_probs))
    for branch in ("image", "joint", "meta"):
        torch.testing.assert_close(loss.terms[branch], weighted(logits[branch].log_softmax(-1)))


# -- the class-balanced sampler ------------------------------------------------------------------------
def test_balanced_sampler_draws_classes_uniformly() -> None:
    """80/15/5 labels, 60 epochs of 100 draws (seed 0): every class share within 0.03 of 1/3.

    The standard deviation of a share is sqrt(1/3 * 2/3 / 6000) ~ 0.006, so 0.03 is 5 sigma; a
    sampler weighting by frequency instead of its inverse gives class 0 a share of ~0.96.
    """
    labels = [0] * 80 + [1] * 15 + [2] * 5
    sampler = EpochSampler(labels, seed=0, mode="balanced")
    drawn: Counter[int] = Counter()
    for epoch in range(60):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(labels)
        drawn.update(labels[i] for i in order)
    total = sum(drawn.values())
    for c in range(3):
        assert abs(drawn[c] / total - 1 / 3) < 0.03, (c, drawn)


def test_shuffle_sampler_visits_every_sample_once_per_epoch_in_a_seeded_order() -> None:
    labels = [0] * 7 + [1] * 3
    orders = []
    for seed, epoch in ((0, 0), (0, 0), (0, 1), (1, 0)):
        sampler = EpochSampler(labels, seed=seed, mode="shuffle")
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert all(sorted(o) == list(range(10)) for o in orders)
    assert orders[0] == orders[1]  # a pure function of (seed, epoch)
    assert orders[0] != orders[2] and orders[0] != orders[3]
    default = EpochSampler(labels, seed=0)  # shuffle is the default mode
    assert list(default) == orders[0] and len(default) == 10
    sequential = EpochSampler(labels, seed=3, mode="sequential")  # evaluation: the dataset order
    sequential.set_epoch(7)
    assert list(sequential) == list(range(10))
    with pytest.raises(ValueError, match="'balance'"):
        EpochSampler(labels, seed=0, mode="balance")


@pytest.mark.parametrize("world_size", [1, 3])
def test_sampler_start_skips_indices_of_an_interrupted_epoch(world_size: int) -> None:
    sampler = EpochSampler(list(range(10)), seed=2, mode="shuffle", rank=world_size - 1, world_size=world_size)
    sampler.set_epoch(4)
    whole = list(sampler)
    assert len(sampler) == len(whole) == -(-10 // world_size)
    for start in (1, 3, len(whole) + 2):
        sampler.set_epoch(4, start=start)
        assert list(sampler) == whole[start:]
        assert len(sampler) == max(len(whole) - start, 0)


# -- seed and eval_batch_size, through the trainer -----------------------------------------------------
def _indices(loader) -> list[int]:
    """The sample indices of one epoch of a training loader (its sampler yields whole batches)."""
    return [i for batch in loader.sampler for i in batch]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, cache_dir) -> dict[str, dict[str, Any]]:
    """Three trainers (seed 5, seed 5 again, seed 6 with the balanced sampler), each observed right
    after construction: initial weights, epoch orders, first batch (augmentation draws from the
    generator ``seed`` seeded), validation batch size, and 200 epochs of balanced draws."""
    root = tmp_path_factory.mktemp("seeded")
    settings = {
        "a": {"seed": 5, "eval_batch_size": 5},
        "a2": {"seed": 5, "eval_batch_size": 5},
        "b": {"seed": 6, "sampler": "balanced"},
    }
    seen: dict[str, dict[str, Any]] = {}
    for name, train in settings.items():
        trainer = _trainer(root / name, cache_dir, **train)
        try:
            data = trainer.data
            seen[name] = {
                "state": {k: v.clone() for k, v in model_state(trainer.model).items()},
                "order": [_indices(data.train_loader(epoch=e)) for e in (0, 1)],
                "first": next(iter(data.train_loader(epoch=0))),
                "eval_batch": data.val_loader().sampler.batch_size,
                "batch_size": trainer.config.train.batch_size,
                "labels": data.train_set.labels,
                "draws": [i for e in range(200) for i in _indices(data.train_loader(epoch=e))] if name == "b" else [],
            }
        finally:
            trainer.close()
    return seen


def test_seed_fixes_initialisation_order_and_batches(seeded) -> None:
    a, a2, b = seeded["a"], seeded["a2"], seeded["b"]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], a2["state"][k]) for k in a["state"])
    assert any(not torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["order"] == a2["order"]
    assert a["order"][0] != a["order"][1]  # a new order every epoch
    assert a["first"]["lesion_id"] == a2["first"]["lesion_id"]
    for m in ("derm", "clinical", "meta"):
        assert torch.equal(a["first"][m], a2["first"][m]), m


def test_eval_batch_size_defaults_to_twice_the_batch_size(seeded) -> None:
    assert seeded["a"]["eval_batch"] == 5
    assert seeded["b"]["eval_batch"] == 2 * seeded["b"]["batch_size"] == 16


def test_trainer_with_balanced_sampler_draws_its_classes_uniformly(seeded) -> None:
    labels, draws = seeded["b"]["labels"], seeded["b"]["draws"]
    present = sorted(set(labels))
    drawn = Counter(labels[i] for i in draws)
    total, k = len(draws), len(present)
    assert Counter(labels).most_common(1)[0][1] >= 3 * min(Counter(labels).values())  # imbalanced
    # each share's standard deviation is sqrt(p (1 - p) / total); the tolerance is 5 of them
    sd = math.sqrt((1 / k) * (1 - 1 / k) / total)
    assert set(drawn) == set(present)
    for c in present:
        assert abs(drawn[c] / total - 1 / k) < 5 * sd, (c, drawn, Counter(labels))


def test_ranks_take_every_world_size_th_index_of_the_padded_order() -> None:
    labels = list(range(10))
    whole = EpochSampler(labels, seed=2)
    whole.set_epoch(4)
    order = list(whole)
    shards = []
    for rank in range(3):
        sampler = EpochSampler(labels, seed=2, rank=rank, world_size=3)
        sampler.set_epoch(4)
        shards.append(list(sampler))
    padded = order + order[:2]  # 10 -> 12, a multiple of the world size
    assert [shards[i % 3][i // 3] for i in range(12)] == padded
