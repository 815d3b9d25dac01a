"""Component registries: one per kind of component, filled by a decorator, open to plugins.

A registry is a plain dict from a component's name to its class and its pydantic spec class.
The name is the spec's ``kind`` literal, so the spec and the component can never disagree::

    import fusionkit as fk

    class GatedSumSpec(fk.specs.FusionSpec):
        kind: Literal["gated_sum"] = "gated_sum"
        out_dim: PositiveInt = 256

    @fk.register("fusion", GatedSumSpec)
    class GatedSumFusion(nn.Module):
        def __init__(self, *, image_dim: int, meta_dim: int, out_dim: int) -> None: ...

A component may also be named by its import path, ``fk.register("fusion", GatedSumSpec,
"my_plugin.fusion:GatedSumFusion")``: the class (and torch with it) is imported when a model is
first built from it, so listing components or validating specs stays light.

Third-party packages register through the entry-point group ``fusionkit.components``: each entry
point names a module (or an object in one) that registers its components when imported. The
registries fill themselves when first asked (listed, looked up, used to validate or build a spec),
nerfstudio-style, not when ``fusionkit`` is imported: the built-in components
(:mod:`fusionkit.components`) and then the plugins load once, at that moment. A plugin that fails
to load is a warning naming it, and is skipped. :class:`fusionkit.ModelSpec` looks a slot's ``kind`` up
here when it validates, so a component registered at any time is accepted from then on.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from fusionkit.errors import ConfigError

ComponentKind = Literal["image_encoder", "metadata_encoder", "fusion", "decision"]
"""The kinds of component fusionkit assembles a model from."""

COMPONENT_KINDS: tuple[str, ...] = get_args(ComponentKind)
PLUGIN_GROUP = "fusionkit.components"
BUILT_IN_MODULE = "fusionkit.components.catalog"
"""The module whose ``register_built_ins()`` registers the built-in components (:func:`ensure_loaded` calls it)."""
SPEC_BASES: dict[str, str] = {
    "image_encoder": "fusionkit.components.base:ImageEncoderSpec",
    "metadata_encoder": "fusionkit.components.base:MetadataEncoderSpec",
    "fusion": "fusionkit.components.base:FusionSpec",
    "decision": "fusionkit.components.base:DecisionSpec",
}
"""The spec base class each kind's specs must subclass, by import path (imported on first registration)."""
"""The package whose import registers the built-in components (by name: it is a layer above this one)."""


class PluginWarning(UserWarning):
    """A third-party plugin named in the ``fusionkit.components`` entry points failed to load."""


@dataclass(frozen=True)
class ComponentEntry:
    """One registered component: its kind, name, spec class and class, and where it came from.

    ``target`` is the class, or its import path ``"module:Class"``; :attr:`component` imports it
    then (the first model built from it does), so a registration never has to import torch.
    """

    kind: str
    name: str
    spec: type
    module: str
    target: type | str

    @property
    def qualname(self) -> str:
        """The component class's qualified name inside :attr:`module`."""
        return self.target.partition(":")[2] if isinstance(self.target, str) else self.target.__qualname__

    @property
    def component(self) -> type:
        """The component class (imported on first use when it was registered by its path)."""
        if not isinstance(self.target, str):
            return self.target
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        if not inspect.isclass(obj):
            raise TypeError(f"{self.kind} {self.name!r}: {self.target} is not a class; got {obj!r}")
        return obj


class Registry:
    """The components of one kind, by name (timm-style: a dict filled by a decorator)."""

    def __init__(self, kind: str, spec_base: type | str | None = None) -> None:
        self.kind = kind
        self._spec_base = spec_base
        self._entries: dict[str, ComponentEntry] = {}

    @property
    def spec_base(self) -> type | None:
        """The class every spec of this kind must subclass (given by its path ``"module:Class"``, imported here)."""
        if isinstance(self._spec_base, str):
            module, _, name = self._spec_base.partition(":")
            self._spec_base = getattr(importlib.import_module(module), name)
        return self._spec_base if isinstance(self._spec_base, type) else None

    def __contains__(self, name: object) -> bool:
        ensure_loaded()
        return name in self._entries

    def __len__(self) -> int:
        ensure_loaded()
        return len(self._entries)

    def add(self, spec: type, component: type | str) -> ComponentEntry:
        """Register ``component`` (a class, or its path ``"module:Class"``) under the ``kind`` literal
        of ``spec``; a duplicate name is an error."""
        base = self.spec_base
        if base is not None and not (isinstance(spec, type) and issubclass(spec, base)):
            raise TypeError(f"a {self.kind} spec must subclass {base.__name__}; got {spec!r}")
        name = spec_kind_name(spec)
        if name in self._entries:
            old = self._entries[name]
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {old.module}.{old.qualname}); choose another kind name"
            )
        if isinstance(component, str):
            module, sep, qualname = component.partition(":")
            if not (sep and module and qualname):
                raise TypeError(f"a {self.kind} component path must read 'module:Class'; got {component!r}")
        elif inspect.isclass(component):
            module = component.__module__
        else:
            raise TypeError(f"a {self.kind} component must be a class; got {component!r}")
        entry = ComponentEntry(self.kind, name, spec, module, component)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> ComponentEntry:
        """The entry registered as ``name``; an unknown name is a :class:`ConfigError` listing the known ones."""
        ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def registered(self) -> frozenset[str]:
        """The names registered so far, without filling the registry first (for the code that fills it)."""
        return frozenset(self._entries)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching an fnmatch ``pattern``."""
        ensure_loaded()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def specs(self) -> list[type]:
        """The registered spec classes, sorted by name."""
        ensure_loaded()
        return [self._entries[n].spec for n in sorted(self._entries)]


def spec_kind_name(spec: type) -> str:
    """The name a spec class registers under: the single value of its ``kind: Literal[...]`` field."""
    fields = getattr(spec, "model_fields", None)
    if not fields or "kind" not in fields:
        raise TypeError(f"{spec!r} has no 'kind' field; a spec needs kind: Literal['name']")
    annotation = fields["kind"].annotation
    values = get_args(annotation) if get_origin(annotation) is Literal else ()
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(f"{spec.__name__}.kind must be a Literal with one string value; got {annotation!r}")
    return values[0]


REGISTRIES: dict[str, Registry] = {kind: Registry(kind, SPEC_BASES[kind]) for kind in COMPONENT_KINDS}


def _registry(kind: str) -> Registry:
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise ConfigError(f"unknown component kind {kind!r}; expected one of {', '.join(COMPONENT_KINDS)}") from None


def get_registry(kind: str) -> Registry:
    """The registry of one component kind, filled (built-ins, then plugins) on first use; an
    unknown kind is a :class:`ConfigError`.

    ``fusionkit.registry(kind)`` calls this too: the module :mod:`fusionkit.registry` is callable.
    """
    reg = _registry(kind)
    ensure_loaded()
    return reg


def register(kind: str, spec: type, component: type | str | None = None) -> Any:
    """Register a component class of ``kind`` with its spec class.

    Use as a decorator, ``@fk.register("fusion", MySpec)``, or directly,
    ``fk.register("fusion", MySpec, MyFusion)``; ``fk.register("fusion", MySpec, "pkg.mod:MyFusion")``
    names the class by its import path, imported when a model is first built from it. The component's
    constructor takes the spec's fields (except ``kind``) as keyword arguments, plus the widths the
    builder knows (see the spec base classes in :mod:`fusionkit.specs`), and the component exposes its
    output width as ``out_dim``.
    """
    reg = _registry(kind)
    # the built-ins first (a plugin's name must not take a built-in's); not the plugins: they register while they load
    _register_built_ins()
    if component is not None:
        reg.add(spec, component)
        return component

    def decorator(cls: type) -> type:
        reg.add(spec, cls)
        return cls

    return decorator


def list_components(kind: str | None = None, pattern: str = "*") -> list[str] | dict[str, list[str]]:
    """Registered component names of ``kind`` matching ``pattern``, or all kinds as a dict."""
    ensure_loaded()
    if kind is None:
        return {k: REGISTRIES[k].names(pattern) for k in COMPONENT_KINDS}
    return get_registry(kind).names(pattern)


_plugins_loaded = False
_loaded = False
_built_ins_registered = False


def _register_built_ins() -> None:
    """Register the built-in components once (:data:`BUILT_IN_MODULE`'s ``register_built_ins``)."""
    global _built_ins_registered
    if not _built_ins_registered:
        _built_ins_registered = True
        importlib.import_module(BUILT_IN_MODULE).register_built_ins()


def ensure_loaded() -> None:
    """Fill the registries once: import the built-in components, then load the plugins.

    Every way of asking a registry (:func:`get_registry`, :func:`list_components`, a lookup, a spec
    validated or built) calls this first; ``import fusionkit`` does not, so it stays fast.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin that asks the registry while it loads must not start this again
    _register_built_ins()
    load_plugins()


def load_plugins(*, force: bool = False) -> list[str]:
    """Import the ``fusionkit.components`` entry points once; returns the names that loaded.

    A plugin that raises while loading is reported as a :class:`PluginWarning` naming it and its
    target, and skipped. An entry point may name a module (its import registers components) or a
    callable that is not a class (called with no arguments to register them).
    """
    import importlib.metadata  # here: reading the installed distributions' metadata is the slow part

    global _plugins_loaded
    if _plugins_loaded and not force:
        return []
    _plugins_loaded = True
    loaded = []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            target = ep.load()
            if callable(target) and not inspect.isclass(target) and not inspect.ismodule(target):
                target()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a broken plugin (even one calling sys.exit) must never break fusionkit
            warnings.warn(
                f"fusionkit plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        loaded.append(ep.name)
    return loaded


class _RegistryModule(types.ModuleType):
    """This module's type: ``fusionkit.registry(kind)`` is :func:`get_registry` (the name predates the module)."""

    def __call__(self, kind: str) -> Registry:
        return get_registry(kind)


sys.modules[__name__].__class__ = _RegistryModule
