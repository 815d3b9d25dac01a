"""``--param KEY=KIND:ARGS``: the search space of ``fusionkit tune``, one config value per parameter.

The kinds (each maps onto one Optuna distribution):

* ``log:LOW:HIGH``: a float drawn on a log scale, ``0 < LOW < HIGH`` (``train.lr=log:1e-5:1e-3``);
* ``float:LOW:HIGH[:STEP]``: a float, uniform or on a grid of ``STEP`` (``train.weight_decay=float:0:0.1``);
* ``int:LOW:HIGH[:STEP]``: an integer, both ends included (``model.fusion.attention_heads=int:4:8``);
* ``cat:A,B,...``: one of the listed values, each read as a YAML scalar (``train.sampler=cat:shuffle,balanced``).

``KEY`` is a dotted path into the run config, as in ``--set``; a sampled value becomes the override
``KEY=VALUE``. Parsing needs no Optuna: a bad spec is reported (one line naming the ``--param``)
before anything else happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from fusionkit.errors import ConfigError

Kind = Literal["log", "float", "int", "cat"]
KINDS: tuple[Kind, ...] = ("log", "float", "int", "cat")
"""The parameter kinds, in the order the help lists them."""

Scalar = str | int | float | bool | None
"""What a categorical choice may be (what Optuna stores)."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched config value: ``key`` (dotted path), ``kind``, and its range or choices.

    ``text`` is the ``--param`` as given (error messages quote it). For ``log``/``float``/``int``,
    ``low`` and ``high`` are both included and ``step`` is the grid (None: continuous, or 1 for
    ``int``); for ``cat``, ``choices`` holds the values.
    """

    text: str
    key: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: Any) -> Scalar:
        """Draw (or take the enqueued) value for an Optuna ``trial``."""
        if self.kind == "cat":
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log", step=self.step)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in the range (on its grid) or among the choices."""
        if self.kind == "cat":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return math.isclose(k, round(k), abs_tol=1e-9)

    def override(self, value: Scalar) -> str:
        """``KEY=VALUE`` with VALUE written so that YAML reads back the same value and type."""
        return f"{self.key}={yaml_scalar(value)}"


def yaml_scalar(value: Scalar) -> str:
    """``value`` as a one-line YAML scalar (``1e-05`` becomes ``1.0e-05``, which YAML reads as a float)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _number(spec: str, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--param {spec!r}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"--param {spec!r}: {what} must be finite, got {text!r}")
    return value


def parse_param(text: str) -> ParamSpec:
    """Parse one ``--param KEY=KIND:ARGS``; a :class:`ConfigError` names the ``--param`` and what is wrong."""
    key, sep, rest = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--param {text!r}: expected KEY=KIND:ARGS, e.g. train.lr=log:1e-5:1e-3")
    if any(not part for part in key.split(".")) or any(c.isspace() for c in key):
        raise ConfigError(f"--param {text!r}: {key!r} is not a dotted config path (e.g. train.lr)")
    kind, sep, args = rest.strip().partition(":")
    if kind not in KINDS or not sep:
        raise ConfigError(
            f"--param {text!r}: expected KIND:ARGS with KIND one of {', '.join(KINDS)} "
            "(log:LOW:HIGH, float:LOW:HIGH[:STEP], int:LOW:HIGH[:STEP], cat:A,B,...)"
        )
    if kind == "cat":
        return ParamSpec(text=text, key=key, kind="cat", choices=_choices(text, args))
    parts = args.split(":")
    if len(parts) not in (2, 3) or (kind == "log" and len(parts) != 2):
        form = "log:LOW:HIGH" if kind == "log" else f"{kind}:LOW:HIGH[:STEP]"
        raise ConfigError(f"--param {text!r}: expected {form}")
    low, high = _number(text, parts[0], "LOW"), _number(text, parts[1], "HIGH")
    step = _number(text, parts[2], "STEP") if len(parts) == 3 else None
    if kind == "int":
        for name, v in (("LOW", low), ("HIGH", high), ("STEP", step)):
            if v is not None and not v.is_integer():
                raise ConfigError(f"--param {text!r}: {name} of an int parameter must be an integer, got {v:g}")
    if not low < high:
        raise ConfigError(f"--param {text!r}: needs LOW < HIGH, got {low:g} and {high:g}")
    if kind == "log" and low <= 0:
        raise ConfigError(f"--param {text!r}: a log range needs LOW > 0, got {low:g}")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"--param {text!r}: STEP must be > 0 and at most HIGH - LOW, got {step:g}")
    return ParamSpec(text=text, key=key, kind=kind, low=low, high=high, step=step)


def _scalar(text: str) -> Scalar:
    """A choice as YAML reads it (``true``, ``16``, ``0.5``, ``null``, ``balanced``); anything that is
    not a scalar (a date, a list) stays the text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-5 as a string
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value if isinstance(value, bool | int | float) or value is None else text


def _choices(text: str, args: str) -> tuple[Scalar, ...]:
    raw = [a.strip() for a in args.split(",")]
    if any(not a for a in raw):
        raise ConfigError(f"--param {text!r}: an empty choice; expected cat:A,B,...")
    values = [_scalar(a) for a in raw]
    if len(values) < 2:
        raise ConfigError(f"--param {text!r}: a categorical parameter needs at least two choices")
    seen = [yaml_scalar(v) for v in values]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"--param {text!r}: a choice is listed twice")
    return tuple(values)


def parse_params(texts: list[str]) -> list[ParamSpec]:
    """Parse every ``--param``; at least one, and each key once."""
    if not texts:
        raise ConfigError("give at least one --param KEY=KIND:ARGS (e.g. train.lr=log:1e-5:1e-3)")
    specs = [parse_param(t) for t in texts]
    keys: dict[str, str] = {}
    for s in specs:
        if s.key in keys:
            raise ConfigError(f"--param {s.text!r}: {s.key} is already searched by --param {keys[s.key]!r}")
        keys[s.key] = s.text
    return specs


def parse_enqueued(text: str, specs: list[ParamSpec]) -> dict[str, Scalar]:
    """``--enqueue KEY=VALUE,KEY=VALUE``: values (of searched keys, in their ranges) for a trial run
    before the sampler's own; keys left out are sampled."""
    by_key = {s.key: s for s in specs}
    out: dict[str, Scalar] = {}
    for item in (p.strip() for p in text.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--enqueue {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
        if key not in by_key:
            raise ConfigError(f"--enqueue {text!r}: {key} is not a --param ({', '.join(by_key)})")
        spec = by_key[key]
        value: Scalar
        if spec.kind == "cat":
            value = _scalar(raw.strip())
        else:
            value = _number(spec.text, raw.strip(), "value")  # YAML would read 1e-5 as a string
            value = int(value) if spec.kind == "int" and value.is_integer() else value
        if not spec.contains(value):
            raise ConfigError(f"--enqueue {text!r}: {key}={raw.strip()} is outside --param {spec.text!r}")
        out[key] = value
    return out
