"""Masking strategies, one module per method. Importing this package registers them all."""

from . import harmodt, mtdt, promptdt, socodt  # noqa: F401
