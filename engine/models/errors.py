"""Errors the CLI turns into one clear line."""


class ModelSpecError(Exception):
    """A model spec that names nothing loadable."""


class UnsupportedArchitecture(Exception):
    """A model whose decoder layout the adapters do not know."""


class SurgeryError(Exception):
    """A layer removal that cannot be done (unknown or already removed layer, last layer)."""
