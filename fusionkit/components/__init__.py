"""The built-in components (their spec classes import without torch).

:mod:`fusionkit.components.catalog` holds the spec classes and names each component class by its
import path; the registries register them (``catalog.register_built_ins``) when first asked, and a
component module (and torch) is imported when a model is first built from it.
"""
