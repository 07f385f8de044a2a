"""The package version, for artefact metadata (`draftvocab_version`).

Lives in `core` so that any stage can record it without importing the package root, which is
the public API and an entry point, not a dependency.
"""

__version__ = "0.1.0"
