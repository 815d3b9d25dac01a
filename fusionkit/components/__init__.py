"""The built-in components; importing this package registers them (without importing torch).

The registrations live in :mod:`fusionkit.components.catalog`, which holds the spec classes and
names each component class by its import path; a component module (and torch) is imported when a
model is first built from it.
"""

from fusionkit.components import catalog  # noqa: F401
