"""The pretrained-weights paths of ``TimmImageEncoder``, pinned exactly (issue 12's mutants).

No network: the hub probe's socket and cache look-ups are monkeypatched, weights files are saved
into ``tmp_path`` from tiny timm ``test_*`` models with random weights.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import huggingface_hub
import pytest
import timm
import torch

import fusionkit as fk
from fusionkit.components import image_encoders as ie
from fusionkit.components.image_encoders import TimmImageEncoder, TimmImageEncoderSpec

TAIL = "; set pretrained: false or give weights_file"


def _cfg(hf_hub_id=None, url="", file=None):
    return SimpleNamespace(hf_hub_id=hf_hub_id, url=url, file=file)


@pytest.fixture
def probe(monkeypatch):
    """Online, nothing cached; records every cache look-up and connection attempt."""
    calls = SimpleNamespace(cache=[], connect=[], closed=0, cache_hit=None, refuse=None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)

    def cache(repo, name):
        calls.cache.append((repo, name))
        return "/cache/" + name if name == calls.cache_hit else None

    class Conn:
        def close(self):
            calls.closed += 1

    def connect(address, timeout=None):
        calls.connect.append((address, timeout))
        if calls.refuse:
            raise calls.refuse
        return Conn()

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache)
    monkeypatch.setattr(socket, "create_connection", connect)
    return calls


# -- _has_pretrained_source ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (None, False),
        (_cfg(), False),
        (_cfg(hf_hub_id="a/b"), True),
        (_cfg(url="http://x/w.pth"), True),
        (_cfg(file="/w.pth"), True),
    ],
)
def test_a_pretrained_source_is_a_hub_id_a_url_or_a_file(monkeypatch, cfg, expected):
    seen = []
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name, **kw: seen.append((name, kw)) or cfg)
    assert ie._has_pretrained_source("some_model.tag") is expected
    assert seen == [("some_model.tag", {"allow_unregistered": False})]


# -- _hub_unreachable ------------------------------------------------------------------------
def test_probe_connects_once_to_the_default_hub_with_a_short_timeout(probe, monkeypatch):
    real, seen = timm.models.get_pretrained_cfg, []
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name, **kw: seen.append(kw) or real(name, **kw))
    assert ie.HUB_PROBE_SECONDS == 3.0
    assert ie._hub_unreachable("test_efficientnet") is None
    assert probe.cache == [
        ("timm/test_efficientnet.r160_in1k", n)
        for n in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    ]
    assert probe.connect == [(("huggingface.co", 443), 3.0)] and probe.closed == 1
    assert seen == [{"allow_unregistered": False}]


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("http://mirror.local", ("mirror.local", 80)),
        ("https://mirror.local", ("mirror.local", 443)),
        ("https://mirror.local:8443/", ("mirror.local", 8443)),
        ("http://m:81", ("m", 81)),
        ("", ("huggingface.co", 443)),
        ("/no/host", ("huggingface.co", 443)),
    ],
)
def test_probe_follows_hf_endpoint(probe, monkeypatch, endpoint, address):
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert ie._hub_unreachable("test_efficientnet") is None
    assert probe.connect == [(address, 3.0)]


def test_unreachable_hub_is_reported_in_one_line(probe, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:81")
    probe.refuse = ConnectionRefusedError("refused")
    assert ie._hub_unreachable("test_efficientnet") == (
        "the hub mirror.local:81 cannot be reached (refused); weights not in the local cache"
    )
    probe.refuse = TimeoutError("timed out")  # any OSError
    assert "(timed out)" in ie._hub_unreachable("test_efficientnet")


@pytest.mark.parametrize("hit", ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"])
def test_cached_weights_skip_the_probe(probe, hit):
    probe.cache_hit = hit
    probe.refuse = OSError("down")
    assert ie._hub_unreachable("test_efficientnet") is None
    assert probe.connect == [] and probe.cache[-1][1] == hit


def test_probe_is_skipped_offline_without_a_hub_id_and_for_odd_repos(probe, monkeypatch):
    probe.refuse = OSError("down")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ie._hub_unreachable("test_efficientnet") is None and probe.cache == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # only "1" means offline
    assert ie._hub_unreachable("test_efficientnet").startswith("the hub huggingface.co:443")
    probe.cache.clear()
    for cfg in (None, _cfg(url="http://x/w.pth")):  # nothing on the hub: left to timm
        monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name, cfg=cfg, **kw: cfg)
        assert ie._hub_unreachable("x") is None
    assert probe.cache == []
    # a revision is not part of the repo id; an odd repo id is left to timm to report
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda name, **kw: _cfg(hf_hub_id="org/repo@v2"))
    ie._hub_unreachable("x")
    assert probe.cache[0] == ("org/repo", "model.safetensors")

    def odd(repo, name):
        raise ValueError("bad repo id")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", odd)
    probe.connect.clear()
    assert ie._hub_unreachable("x") is None and probe.connect == []


# -- the constructor's errors ----------------------------------------------------------------
def test_constructor_error_messages_are_exact(monkeypatch):
    with pytest.raises(fk.PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_mambaout", pretrained=True)
    assert str(info.value) == (
        "timm has no pretrained weights for 'test_mambaout'; set pretrained: "
        "false, name a tag with weights, or give weights_file"
    )

    monkeypatch.setattr(ie, "_hub_unreachable", lambda name: f"no route for {name}")
    with pytest.raises(fk.PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_efficientnet", pretrained=True)
    assert str(info.value) == (
        "cannot load pretrained weights for 'test_efficientnet': no route for test_efficientnet" + TAIL
    )


@pytest.mark.parametrize(("offline", "hint"), [("1", " (HF_HUB_OFFLINE=1 is set)"), ("0", "")])
def test_a_failed_download_names_the_model_the_hint_and_the_cause(monkeypatch, offline, hint):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(ie, "_hub_unreachable", lambda name: None)
    cause = OSError(" Cannot find the requested files in the local cache for X. ")

    def fail(*args, **kwargs):
        raise cause

    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(fk.PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_efficientnet", pretrained=True)
    assert str(info.value) == (
        f"cannot load pretrained weights for 'test_efficientnet'{hint}: "
        "OSError: Cannot find the requested files in the local cache for X" + TAIL
    )
    assert info.value.__cause__ is cause


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"pretrained": False, "num_classes": 0, "drop_rate": 0.0}),
        (
            {"pretrained": True, "drop_rate": 0.25, "drop_path_rate": 0.125},
            {"pretrained": True, "num_classes": 0, "drop_rate": 0.25, "drop_path_rate": 0.125},
        ),
    ],
)
def test_create_model_gets_exactly_the_spec_arguments(monkeypatch, kwargs, expected):
    seen = []
    real = timm.create_model
    monkeypatch.setattr(ie, "_hub_unreachable", lambda name: None)
    monkeypatch.setattr(
        timm, "create_model", lambda name, **kw: seen.append((name, kw)) or real(name, **{**kw, "pretrained": False})
    )
    encoder = TimmImageEncoder(model_name="test_efficientnet", **kwargs)
    assert seen == [("test_efficientnet", expected)]
    assert encoder.model_name == "test_efficientnet" and encoder.out_dim == 256


def test_no_hub_checks_without_hub_weights(monkeypatch, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("the hub was consulted")

    monkeypatch.setattr(ie, "_hub_unreachable", never)
    monkeypatch.setattr(ie, "_has_pretrained_source", never)
    TimmImageEncoder(model_name="test_mambaout", pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_mambaout", num_classes=0).state_dict(), path)
    TimmImageEncoder(model_name="test_mambaout", pretrained=True, weights_file=path)


# -- weights files ---------------------------------------------------------------------------
def _state(model_name="test_efficientnet", **kw):
    return timm.create_model(model_name, num_classes=kw.pop("num_classes", 0), **kw).state_dict()


def test_pth_files_are_read_onto_the_cpu_with_weights_only(monkeypatch, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_state(), path)
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append((a, kw)) or real(*a, **kw))
    TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
    assert seen == [((path,), {"map_location": "cpu", "weights_only": True})]


class _Pickled:
    """Not a tensor: ``weights_only=True`` refuses to unpickle it."""


def test_weights_file_errors_are_one_exact_line(tmp_path):
    def error(path):
        with pytest.raises(fk.PretrainedWeightsError) as info:
            TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
        return str(info.value)

    assert error(tmp_path) == f"{tmp_path}: weights file not found"  # a folder is no file
    code = tmp_path / "code.pth"
    torch.save({"conv_stem.weight": _Pickled()}, code)
    assert error(code).startswith(f"{code}: cannot read weights (") and "_Pickled" in error(code)
    pickled = tmp_path / "pickled.safetensors"  # read as safetensors by its suffix, never unpickled
    torch.save(_state(), pickled)
    assert error(pickled).startswith(f"{pickled}: cannot read weights (")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    assert error(listed) == f"{listed}: expected a state dict, found list"
    wrapped = tmp_path / "wrapped.pth"  # a "state_dict" entry that is not a dict is not unwrapped
    torch.save({"state_dict": [1]}, wrapped)
    assert error(wrapped).startswith(f"{wrapped}: weights do not fit EfficientNet (")
    assert error(wrapped).endswith("1 unexpected, e.g. ['state_dict'])")


def test_a_misfit_names_counts_and_the_first_three_keys(tmp_path):
    state = _state()
    for key in ("bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        del state[key]
    for key in ("extra.a", "extra.b", "extra.c", "extra.d"):
        state[key] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(fk.PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
    assert str(info.value) == (
        f"{path}: weights do not fit EfficientNet (4 missing keys, e.g. "
        "['bn1.bias', 'bn1.running_mean', 'bn1.running_var']; 4 unexpected, e.g. ['extra.a', 'extra.b', 'extra.c'])"
    )
    state = _state()
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, path)
    with pytest.raises(fk.PretrainedWeightsError) as info:
        TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
    assert str(info.value).startswith(f"{path}: weights do not fit: Error(s) in loading state_dict")
    assert "size mismatch for conv_stem.weight" in str(info.value)


def _set_classifier(monkeypatch, classifier):
    real = timm.create_model

    def create(*args, **kwargs):
        model = real(*args, **kwargs)
        cfg = dict(model.default_cfg)
        cfg.pop("classifier")
        if classifier is not None:
            cfg["classifier"] = classifier
        model.default_cfg = cfg
        return model

    monkeypatch.setattr(timm, "create_model", create)


@pytest.mark.parametrize("classifier", [None, "classifier", ("aux", "classifier")])
def test_only_the_classifier_keys_the_backbone_lacks_are_dropped(monkeypatch, tmp_path, classifier):
    state = _state(num_classes=4)
    assert {"classifier.weight", "classifier.bias"} <= set(state)
    state["aux.weight"] = torch.zeros(2)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    _set_classifier(monkeypatch, classifier)
    if classifier is None or classifier == "classifier":  # "classifier" is the default head name
        with pytest.raises(fk.PretrainedWeightsError) as info:
            TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
        assert str(info.value).endswith("1 unexpected, e.g. ['aux.weight'])")
        assert "0 missing keys" in str(info.value)
    else:
        encoder = TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
        assert torch.equal(encoder.backbone.bn2.weight, state["bn2.weight"])


def test_a_backbone_key_under_the_head_prefix_is_kept(monkeypatch, tmp_path):
    _set_classifier(monkeypatch, "bn")  # "bn1.*", "bn2.*" are backbone keys: loaded, not dropped
    state = _state()
    with torch.no_grad():
        state["bn2.weight"].fill_(7.0)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    encoder = TimmImageEncoder(model_name="test_efficientnet", weights_file=path)
    assert torch.equal(encoder.backbone.bn2.weight, torch.full_like(encoder.backbone.bn2.weight, 7.0))


# -- width -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hidden", "input_size"),
    [("absent", None), (None, None), (0, None), (-1, None), (256.0, None), (None, (3, 40, 48))],
)
def test_width_is_measured_at_the_input_size_in_eval_mode(monkeypatch, hidden, input_size):
    """``input_size`` from the model's config, else (3, 224, 224)."""
    real = timm.create_model
    seen = []

    def create(*args, **kwargs):
        model = real(*args, **kwargs)
        if hidden == "absent":
            del model.head_hidden_size
        else:
            model.head_hidden_size = hidden
        cfg = dict(model.default_cfg)
        cfg.pop("input_size")
        if input_size is not None:
            cfg["input_size"] = input_size
        model.default_cfg = cfg
        model.register_forward_pre_hook(
            lambda m, inp: seen.append((tuple(inp[0].shape), m.training, torch.is_grad_enabled()))
        )
        return model

    monkeypatch.setattr(timm, "create_model", create)
    encoder = TimmImageEncoder(model_name="test_efficientnet")
    assert encoder.out_dim == 256 and type(encoder.out_dim) is int
    assert seen == [((1, *(input_size or (3, 224, 224))), False, False)]
    assert encoder.training and encoder.backbone.training


def test_width_measurement_restores_eval_mode(monkeypatch):
    real = timm.create_model

    def create(*args, **kwargs):
        model = real(*args, **kwargs).eval()
        model.head_hidden_size = None
        return model

    monkeypatch.setattr(timm, "create_model", create)
    assert not TimmImageEncoder(model_name="test_efficientnet").backbone.training


def test_a_declared_width_is_trusted_without_a_forward(monkeypatch):
    real = timm.create_model

    def create(*args, **kwargs):
        model = real(*args, **kwargs)
        model.head_hidden_size = 1
        model.register_forward_pre_hook(lambda m, inp: pytest.fail("forward ran"))
        return model

    monkeypatch.setattr(timm, "create_model", create)
    assert TimmImageEncoder(model_name="test_efficientnet").out_dim == 1


# -- spec validation -------------------------------------------------------------------------
def test_unknown_model_and_tag_messages_are_exact():
    def error(name):
        with pytest.raises(ValueError) as info:
            TimmImageEncoderSpec(model_name=name)
        return info.value.errors()[0]["ctx"]["error"].args[0]

    assert error("zzqqxx_net") == "timm has no model 'zzqqxx_net'"
    assert error("resnet5000.tag") == (
        "timm has no model 'resnet5000.tag'; similar: " + ", ".join(timm.list_models("*resnet*")[:5])
    )
    assert error("test_efficientnet.in22k") == (
        "timm model 'test_efficientnet' has no pretrained tag 'in22k'; its tags: test_efficientnet.r160_in1k"
    )
    assert error("test_mambaout.in1k") == "timm model 'test_mambaout' has no pretrained tag 'in1k'; its tags: none"
    assert TimmImageEncoderSpec(model_name="test_efficientnet.r160_in1k").model_name == "test_efficientnet.r160_in1k"
