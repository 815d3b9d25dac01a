"""Bad run configs fuzzed, not only listed (issue 28 item 3).

Hypothesis mutates a valid run config (the quick-start template, in its preset form and resolved
in full) and reads it with the public :func:`fusionkit.runtime.config.load_run_config`. The
property: a harmless change (key order, flow style, comments, CRLF, a BOM, JSON instead of YAML,
an anchor and its alias, a number spelt another way) gives a config equal to the clean one; a
change that no config may hold (an unknown key, a mapping where a value belongs, a word where a
number belongs, a key given twice, a Python tag, an alias bomb, bytes that are not UTF-8, nesting
too deep, no mapping at the top) is refused with a :class:`~fusionkit.errors.ConfigError` of one
line naming the file; a change of one value that may or may not be valid (a huge number, a type
another field would take) is either refused so, or accepted with exactly that value at that field
and every other field as before. Never another exception type, never a silently different config.

Counts are tallied in ``TALLY`` (``tests/README.md`` records them).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionkit.errors import ConfigError
from fusionkit.runtime.config import RunConfig, load_run_config

TEMPLATE = Path(__file__).resolve().parent.parent / "fusionkit" / "templates" / "quickstart.yaml"
EXAMPLES = int(os.environ.get("FUSIONKIT_FUZZ_EXAMPLES", 60))
TALLY: Counter[str] = Counter()

SAME, REFUSE, EITHER = "same", "refuse", "either"
BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
)
"""The billion laughs: 9**9 (387 million) strings once every alias is expanded."""


class Clean(dict):  # type: ignore[type-arg]
    """The clean config (``config``), its full mapping (``full``) and the template's text; a short repr."""

    def __repr__(self) -> str:
        return "Clean(quickstart)"


@pytest.fixture(scope="module")
def clean() -> Clean:
    config = load_run_config(TEMPLATE)
    return Clean(config=config, full=config.model_dump(mode="json"), text=TEMPLATE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    if os.environ.get("FUSIONKIT_FUZZ_TALLY"):
        print(f"\nfuzz tally (config): {dict(sorted(TALLY.items()))}")


def _leaves(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) of a nested mapping whose value is not a mapping."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, data


def _sections(data: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every mapping (the top level included)."""
    if isinstance(data, dict):
        yield path
        for key, value in data.items():
            yield from _sections(value, (*path, key))


def _get(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _shuffled(draw: st.DrawFn, data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    keys = draw(st.permutations(list(data)))
    return {k: _shuffled(draw, data[k]) for k in keys}


@st.composite
def harmless(draw: st.DrawFn, clean: dict[str, Any]) -> tuple[str, str, bytes]:
    """(kind, suffix, bytes) of a file that must load equal to the clean config."""
    kind = draw(st.sampled_from(["reordered", "flow", "json", "template_bytes", "anchor", "numbers"]))
    full = clean["full"]
    suffix = ".yaml"
    if kind == "reordered":
        text = yaml.safe_dump(_shuffled(draw, full), sort_keys=False)
    elif kind == "flow":
        text = yaml.safe_dump(full, default_flow_style=True, width=draw(st.integers(20, 200)))
    elif kind == "json":
        suffix, text = ".json", json.dumps(_shuffled(draw, full), indent=draw(st.sampled_from([None, 1, 2])))
    elif kind == "anchor":  # the template's zero seed, named once and used by alias
        text = clean["text"].replace("    seed: 0", "    seed: &zero 0") + "  split_seed: *zero\n"
    elif kind == "numbers":
        text = clean["text"].replace("epochs: 8", draw(st.sampled_from(["epochs: 8.0", "epochs: 0x8", "epochs: +8"])))
        text = text.replace("lr: 1.0e-3", draw(st.sampled_from(["lr: 0.001", "lr: 1e-3", "lr: '1e-3'", "lr: 10.0e-4"])))
    else:
        text = clean["text"]
    if draw(st.booleans()):
        text = "# a comment\n" + text.replace("\n", "  # note\n", 1) if suffix == ".yaml" else text
    if suffix == ".yaml" and draw(st.booleans()):
        text = "---\n" + text
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return kind, suffix, data


@st.composite
def refused(draw: st.DrawFn, clean: dict[str, Any]) -> tuple[str, str, bytes]:
    """(kind, suffix, bytes) of a file that must be refused in one line."""
    full = clean["full"]
    kinds = [
        "unknown_key",
        "mapping_for_value",
        "scalar_for_section",
        "word_for_number",
        "non_finite",
        "duplicate_key",
        "python_tag",
        "alias_bomb",
        "latin1",
        "utf16",
        "deep",
        "not_a_mapping",
        "empty",
        "syntax",
        "bad_preset",
    ]
    kind = draw(st.sampled_from(kinds))
    text: str | None = None
    if kind == "unknown_key":
        section = draw(st.sampled_from(list(_sections(full))))
        key = draw(st.sampled_from(["lr_typo", "epoch", "seeds", "Model", "extra", "kind2"]))
        data = _set(full, (*section, key), draw(st.sampled_from([1, "x", None, [1], {"a": 1}])))
    elif kind == "mapping_for_value":
        path, _ = draw(st.sampled_from(list(_leaves(full))))
        data = _set(full, path, draw(st.sampled_from([{"x": 1}, {"value": 1}, [{"a": 1}]])))
    elif kind == "scalar_for_section":
        section = draw(st.sampled_from([p for p in _sections(full) if p]))
        data = _set(full, section, draw(st.sampled_from(["abc", 5, [1, 2], True])))
    elif kind == "word_for_number":
        numbers = [(p, v) for p, v in _leaves(full) if isinstance(v, int | float) and not isinstance(v, bool)]
        path, _ = draw(st.sampled_from(numbers))
        data = _set(full, path, draw(st.sampled_from(["abc", "1,5", "ten", "", "1e", "--1"])))
    elif kind == "non_finite":
        numbers = [(p, v) for p, v in _leaves(full) if isinstance(v, int | float) and not isinstance(v, bool)]
        path, _ = draw(st.sampled_from(numbers))
        text = yaml.safe_dump(_set(full, path, "__X__"), sort_keys=False).replace(
            "__X__", draw(st.sampled_from([".nan", ".inf", "-.inf", ".NaN"]))
        )
    elif kind == "duplicate_key":
        text = clean["text"].replace("  epochs: 8\n", "  epochs: 8\n  epochs: 9\n")
    elif kind == "python_tag":
        tag = draw(
            st.sampled_from(["!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!binary aGk="])
        )
        text = clean["text"].replace("  device: auto", f"  device: {tag}")
    elif kind == "alias_bomb":
        text = BOMB + clean["text"]
    elif kind == "latin1":
        return kind, ".yaml", ("# r\u00e9sum\u00e9\n" + clean["text"]).encode("latin-1")
    elif kind == "utf16":
        return kind, ".yaml", clean["text"].encode("utf-16")
    elif kind == "deep":
        depth = draw(st.sampled_from([1_000, 2_000]))
        text = clean["text"] + "x: " + "[" * depth + "]" * depth + "\n"
    elif kind == "not_a_mapping":
        text = draw(st.sampled_from(["- 1\n- 2\n", "42\n", "just words\n", "null\n"]))
    elif kind == "empty":
        text = draw(st.sampled_from(["", "\n", "# only a comment\n"]))
    elif kind == "syntax":
        text = clean["text"].replace(
            "  lr: 1.0e-3", draw(st.sampled_from(["  lr: [1", "  lr: {a", " lr:: x", "\tlr: 1"]))
        )
    else:  # bad_preset
        preset = draw(st.sampled_from(["[ji-adf]", "{a: 1}", "5", "no-such-preset", "null"]))
        text = clean["text"].replace("preset: ji-adf", f"preset: {preset}")
    if text is None:
        text = yaml.safe_dump(data, sort_keys=False)
    return kind, ".yaml", text.encode("utf-8")


VALUES = st.sampled_from(
    [10**30, -(10**30), 2**63, -1, 0, 1, 1e308, -1e308, 1e-320, 2.5, True, False, None, "abc", "", [], [1, 2], "1"]
)
"""One value in place of another: huge, negative, zero, tiny, of another type."""


def _one_line(error: ConfigError, path: Path) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message, f"more than one line: {message!r}"
    assert str(path) in message, f"names not the file: {message!r}"


def _load(tmp_path: Path, suffix: str, data: bytes, overrides: list[str] | None = None) -> tuple[Path, Any]:
    path = tmp_path / f"config{suffix}"
    path.write_bytes(data)
    try:
        return path, load_run_config(path, overrides)
    except ConfigError as error:
        return path, error


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_config_file_mutations_are_equal_or_refused_in_one_line(clean, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cfg")
    be_harmless = data.draw(st.booleans(), label="harmless")
    kind, suffix, content = data.draw(harmless(clean) if be_harmless else refused(clean), label="mutation")
    TALLY["file.ran"] += 1
    path, got = _load(tmp_path, suffix, content)
    if isinstance(got, ConfigError):
        _one_line(got, path)
        assert not be_harmless, f"a harmless change ({kind}) was refused: {got}"
        TALLY["file.refused"] += 1
    else:
        assert isinstance(got, RunConfig)
        assert be_harmless, f"an invalid config ({kind}) was accepted"
        assert got == clean["config"], f"a harmless change ({kind}) gave another config"
        TALLY["file.equal"] += 1


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_one_value_changed_is_taken_exactly_or_refused_in_one_line(clean, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cfg")
    full = clean["full"]
    path_in, _ = data.draw(st.sampled_from(list(_leaves(full))), label="field")
    value = data.draw(VALUES, label="value")
    TALLY["value.ran"] += 1
    changed = _set(full, path_in, value)
    path, got = _load(tmp_path, ".yaml", yaml.safe_dump(changed, sort_keys=False).encode())
    if isinstance(got, ConfigError):
        _one_line(got, path)
        TALLY["value.refused"] += 1
        return
    dumped = got.model_dump(mode="json")
    taken = _get(dumped, path_in)
    # "1" is 1, and an integer in a float field is that float (10**30 becomes 1e30)
    same_number = isinstance(value, str | int) and isinstance(taken, int | float) and float(value) == taken
    assert taken == value or same_number or (isinstance(value, list) and list(taken) == value), (
        f"{'.'.join(path_in)}: {value!r} given, {taken!r} taken"
    )
    assert _set(dumped, path_in, _get(full, path_in)) == full, "another field changed"
    TALLY["value.accepted"] += 1


OVERRIDE_VALUES = st.sampled_from(
    ["1", "-1", "1e400", ".nan", "[", "{a: 1", "[1, 2]", "{}", "null", "", "abc", "!!python/name:os.system", "&a [*a]"]
) | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_overrides_are_taken_or_refused_in_one_line(clean, data, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cfg")
    known = [".".join(p) for p, _ in _leaves(clean["full"])]
    key = data.draw(
        st.sampled_from([*known, "train", "model", "model.preset", "model.overrides", "x.y", "train.lr.x", ""]),
        label="key",
    )
    text = f"{key}={data.draw(OVERRIDE_VALUES, label='value')}"
    if data.draw(st.booleans(), label="no equals sign"):
        text = text.replace("=", " ", 1)
    TALLY["override.ran"] += 1
    path, got = _load(tmp_path, ".yaml", clean["text"].encode(), [text])
    if isinstance(got, ConfigError):
        message = str(got)
        assert "\n" not in message and "\r" not in message, f"more than one line: {message!r}"
        assert str(path) in message
        TALLY["override.refused"] += 1
    else:
        assert isinstance(got, RunConfig)
        TALLY["override.accepted"] += 1


def test_an_alias_bomb_is_refused_in_one_line_without_expanding(tmp_path):
    """The billion laughs inside the train section: refused (an unknown key) in one line, at once."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB.replace("\n", "\n  ").replace("a: &a", "train:\n  a: &a", 1) + "model: {preset: ji-adf}\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model:\n  preset: [ji-adf]\n", "model.preset is ['ji-adf']; expected a preset name"),
        ("model:\n  preset: ji-adf\n  overrides: 5\n", "model.overrides is 5; expected a mapping"),
        ("model:\n  preset: ji-adf\n  fusion: {heads: 2}\n", "a preset takes only 'preset' and 'overrides'"),
        ("model:\n  preset: ji-adf\ntrain: {lr: abc}\n", "invalid RunConfig: train.lr:"),
    ],
)
def test_fuzz_findings_in_the_preset_section_are_one_line_naming_the_file(tmp_path, text, words):
    """Found by the fuzz above: a list as preset name and a number as overrides raised TypeError
    (a traceback); field errors were pydantic's multi-line ValidationError without the file."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


@pytest.mark.parametrize(
    "override", ["train.lr=[", "train.lr={a: 1", "train.lr=!!python/name:os.system", "x={a: 1, a: 2}"]
)
def test_an_override_that_is_not_yaml_is_one_line(tmp_path, override):
    """Found by the fuzz: an override value that is not YAML raised yaml's ScannerError (a traceback)."""
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: ji-adf\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path, [override])
    assert "\n" not in str(info.value) and repr(override) in str(info.value)


def test_a_json_config_with_a_byte_order_mark_reads_as_without(tmp_path, clean):
    """Found by the fuzz: a JSON config saved with a BOM (as Windows editors do) was refused."""
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(clean["full"]).encode())
    assert load_run_config(path) == clean["config"]


@pytest.mark.parametrize(
    "field", ["data.cache_dir", "data.root", "data.split_file", "train.init_from", "model.image_encoder.weights_file"]
)
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, clean, field):
    """Found by the fuzz (500 examples): ``data.cache_dir: ''`` was taken as ``.``, the current folder."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_set(clean["full"], tuple(field.split(".")), "")))
    with pytest.raises(ConfigError, match="is an empty path") as info:
        load_run_config(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
