"""Shared fixtures and helpers for the fusionkit core test suite.

Everything that builds a backbone uses timm's tiny ``test_efficientnet`` (random init, 32x32
images); the fusion blocks, decisions and metadata encoders are tested directly, without a
backbone, so the Hypothesis tests stay fast. Hypothesis runs derandomized (the same examples on
every run) and without deadlines (CPU timings vary).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait on the network for pretrained weights
if "FUSIONKIT_CACHE" not in os.environ:  # image caches of predictions go to the user's cache: keep the suite's apart
    import atexit
    import shutil
    import tempfile

    os.environ["FUSIONKIT_CACHE"] = tempfile.mkdtemp(prefix="fusionkit-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FUSIONKIT_CACHE"], True)

import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# The tensors here are tiny: one intra-op thread is as fast, and it does not collapse when other
# processes share the CPU (two spinning OpenMP threads on a busy 2-core machine can be 100x slower).
torch.set_num_threads(1)

settings.register_profile(
    "fusionkit",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    settings.get_profile("fusionkit"),
    max_examples=20,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
"""For mutmut runs (``HYPOTHESIS_PROFILE=mutation``): 20 examples for a property that sets no count
of its own, and no shrinking. A mutant only has to fail; shrinking a failure of a slow property
can outlast mutmut's time limit and turn a quick kill into a timeout."""
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fusionkit"))

import fusionkit as fk  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
TINY_BACKBONE: dict[str, Any] = {
    "kind": "timm",
    "model_name": "test_efficientnet",
    "pretrained": False,
}
"""The image-encoder override every backbone-building test uses (timm's tiny test model)."""
TINY_OVERRIDES: dict[str, Any] = {"image_encoder": dict(TINY_BACKBONE)}
IMAGE_SIZE = 32
METADATA_WIDTH = 7


def tiny_spec(**fields: Any) -> fk.ModelSpec:
    """A validated ModelSpec with the tiny backbone and small widths, updated with ``fields``."""
    data: dict[str, Any] = {
        "num_classes": 5,
        "image_size": IMAGE_SIZE,
        "image_encoder": dict(TINY_BACKBONE),
        "metadata_encoder": {"kind": "mlp", "hidden_dims": [16], "out_dim": 12},
        "fusion": {"kind": "mmfa", "attention_heads": 2, "head_dim": 4, "out_dim": 16},
        "decision": {"kind": "adf", "hidden_dim": 8},
    }
    data.update(fields)
    return fk.ModelSpec.model_validate(data)


def make_batch(
    spec: fk.ModelSpec,
    batch_size: int,
    *,
    meta_dim: int = METADATA_WIDTH,
    seed: int = 0,
    present: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A random batch with every input of ``spec`` (images at IMAGE_SIZE), optional presence masks."""
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, Any] = {}
    for m in spec.image_modalities:
        batch[m] = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    if spec.uses_meta:
        batch["meta"] = torch.randn(batch_size, meta_dim, generator=gen)
    if present is not None:
        batch["present"] = {m: torch.as_tensor(v, dtype=torch.bool) for m, v in present.items()}
    return batch


def build_tiny(spec: fk.ModelSpec, *, seed: int = 0, meta_dim: int = METADATA_WIDTH) -> fk.FusionModel:
    """``fk.build_model`` with a fixed seed, so parameters are the same on every run."""
    torch.manual_seed(seed)
    return fk.build_model(spec, metadata_width=meta_dim)


def unregister(kind: str, name: str) -> None:
    """Undo a registration made by a test (the spec slots then reject its kind again)."""
    fk.registry(kind)._entries.pop(name, None)


@contextmanager
def temporary_registrations() -> Iterator[list[tuple[str, str]]]:
    """Yield a list; every (kind, name) appended to it (or registered meanwhile) is removed on exit."""
    before = {kind: set(fk.registry(kind)._entries) for kind in fk.COMPONENT_KINDS}
    added: list[tuple[str, str]] = []
    try:
        yield added
    finally:
        for kind in fk.COMPONENT_KINDS:
            for name in set(fk.registry(kind)._entries) - before[kind]:
                fk.registry(kind)._entries.pop(name, None)
        for kind, name in added:
            fk.registry(kind)._entries.pop(name, None)


# -- Hypothesis strategies ---------------------------------------------------------------------
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
MODALITY_NAMES = ("derm", "clinical", "meta")


@st.composite
def spec_dicts(draw: st.DrawFn, *, buildable: bool = False, decision: str | None = None) -> dict[str, Any]:
    """A mapping that must validate as a ModelSpec: any modality subset, fusion and decision.

    ``buildable`` keeps widths tiny and the backbone timm's ``test_efficientnet`` (random init), so
    the spec can be built and run in a test; otherwise fields range widely (for serialisation).
    ``decision`` fixes the decision kind (and draws only modalities and fusions that allow it).
    """
    small = st.integers(1, 6) if buildable else st.integers(1, 4096)
    unit = st.floats(0.0, 0.9, allow_nan=False) if buildable else st.floats(0.0, 1.0, exclude_max=True)
    if decision in ("adf", "average"):  # both groups: an image and the metadata
        images = draw(st.lists(st.sampled_from(MODALITY_NAMES[:2]), min_size=1, max_size=2, unique=True))
        modalities = [*images, "meta"]
    else:
        modalities = draw(st.lists(st.sampled_from(MODALITY_NAMES), min_size=1, max_size=3, unique=True))
    images = any(m != "meta" for m in modalities)
    meta = "meta" in modalities
    num_classes = draw(st.integers(2, 6) if buildable else st.integers(1, 1000))
    data: dict[str, Any] = {"modalities": modalities, "num_classes": num_classes}

    if buildable:
        data["image_size"] = IMAGE_SIZE
        data["image_encoder"] = {
            **TINY_BACKBONE,
            "shared": draw(st.booleans()),
            "combine": draw(st.sampled_from(["concat", "mean"])),
        }
    else:
        data["name"] = draw(st.none() | st.text(max_size=12))
        data["image_size"] = draw(st.integers(1, 4096))
        data["image_encoder"] = {
            "kind": "timm",
            "model_name": draw(st.sampled_from(["test_efficientnet", "resnet18", "tf_efficientnetv2_s.in1k"])),
            "pretrained": draw(st.booleans()),
            "weights_file": draw(st.none() | st.sampled_from(["w.safetensors", "/tmp/x/w.pth"])),
            "drop_rate": draw(unit),
            "drop_path_rate": draw(unit),
            "shared": draw(st.booleans()),
            "combine": draw(st.sampled_from(["concat", "mean"])),
        }
    data["metadata_encoder"] = {
        "kind": "mlp",
        "hidden_dims": draw(st.lists(small, max_size=2)),
        "out_dim": draw(small),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
        "dropout": draw(unit),
        "layer_norm": draw(st.booleans()),
    }

    fusion = None
    if images and meta:
        kinds = ["mmfa", "attention_only", "skip_only", "concat"]
        # adf needs a joint branch; so does a single head when it is to see both groups
        kind = draw(st.sampled_from(kinds if decision in ("adf", "single") else [None, *kinds]))
        if kind in ("mmfa", "attention_only"):
            fusion = {
                "kind": kind,
                "attention_heads": draw(st.integers(1, 3) if buildable else small),
                "head_dim": draw(st.integers(1, 4) if buildable else small),
                "out_dim": draw(small),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
            }
        elif kind == "skip_only":
            fusion = {"kind": kind, "out_dim": draw(small)}
        elif kind == "concat":
            fusion = {"kind": kind}
    data["fusion"] = fusion
    available = [b for b, has in (("image", images), ("joint", fusion is not None), ("meta", meta)) if has]

    decisions: list[dict[str, Any]] = []
    if len(available) == 3:
        decisions.append(
            {
                "kind": "adf",
                "hidden_dim": draw(small),
                "activation": draw(st.sampled_from(ACTIVATIONS)),
                "detach_logits": draw(st.booleans()),
            }
        )
    if len(available) >= 2:
        decisions.append({"kind": "average"})
    if not (images and meta and fusion is None):
        decisions.append({"kind": "single", "branch": draw(st.sampled_from(available))})
    if decision is not None:
        decisions = [d for d in decisions if d["kind"] == decision]
    data["decision"] = draw(st.sampled_from(decisions))

    weight = st.floats(0.0, 2.0) if not buildable else st.sampled_from([0.0, 0.25, 0.5, 1.0])
    data["loss"] = {f"lambda_{b}": draw(weight) if b in available else 0.0 for b in ("image", "joint", "meta")}
    if draw(st.booleans()):
        data["loss"]["class_weights"] = draw(
            st.lists(st.floats(1e-3, 10.0), min_size=num_classes, max_size=num_classes)
        )
    data["heads"] = {"dropout": draw(unit)}
    if len(modalities) >= 2:
        data["modality_dropout"] = {"p": draw(unit)}
    return data


@st.composite
def presence_masks(
    draw: st.DrawFn,
    modalities: tuple[str, ...],
    batch_size: int,
    needs: tuple[tuple[str, ...], ...] = (),
) -> dict[str, list[bool]]:
    """Per-modality (B,) bool lists where every sample keeps at least one modality.

    ``needs`` lists groups of modalities of which every sample must have at least one (a sample
    that has none gets one of the group switched on), e.g. the inputs a single decision reads.
    """
    k = len(modalities)
    rows = []
    for _ in range(batch_size):
        row = draw(st.lists(st.booleans(), min_size=k, max_size=k))
        for group in (tuple(modalities), *needs):
            if not any(row[modalities.index(m)] for m in group):
                row[modalities.index(draw(st.sampled_from(group)))] = True
        rows.append(row)
    return {m: [r[i] for r in rows] for i, m in enumerate(modalities)}


# -- lanes -------------------------------------------------------------------------------------
# The markers are registered (and --strict-markers set) in pyproject.toml; what each means and the
# commands of each lane: tests/README.md, "Lanes".
_SLOW_DESELECTED = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        default=False,
        help="fusionkit: the full lane, every test (by default tests marked slow are deselected)",
    )


def _full_lane(config: pytest.Config) -> bool:
    """--all, a -m expression (it says itself which tests run), or a test named by its node id."""
    return (
        config.getoption("--all")
        or bool(config.getoption("markexpr"))
        or any("::" in arg for arg in config.invocation_params.args)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default lane: deselect the tests marked ``slow`` unless the full lane was asked for."""
    if _full_lane(config):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
        config.stash[_SLOW_DESELECTED] = len(slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say that the slow tests were left out, and how to run everything."""
    n = config.stash.get(_SLOW_DESELECTED, 0)
    if n:
        terminalreporter.write_line(f"default lane: {n} tests marked slow deselected; run every test with --all")


@pytest.fixture
def registrations() -> Iterator[list[tuple[str, str]]]:
    """Components registered during the test are unregistered afterwards (registration is global)."""
    with temporary_registrations() as added:
        yield added


@pytest.fixture
def clean_plugin_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make tests/plugin_fixture.py importable and forget it (and what it registered) afterwards."""
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    sys.modules.pop("plugin_fixture", None)
    with temporary_registrations():
        yield
    sys.modules.pop("plugin_fixture", None)


@pytest.fixture(autouse=True)
def _registry_unchanged() -> Iterator[None]:
    """Fail any test that leaves a component registered (it would leak into other tests)."""
    before = fk.list_components()
    yield
    after = fk.list_components()
    assert after == before, f"a test leaked a registration: {before} -> {after}"
