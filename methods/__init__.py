"""Masking strategies, one module per method. Importing this package registers them all."""

# imported in the order tables list them: baselines as in the paper, then SoCo-DT
from . import promptdt, mtdt, harmodt, socodt  # noqa: F401, I001
