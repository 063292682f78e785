"""The built-in methods, one module per method (the ``mtrl_bench.methods`` entry point:
importing this package registers them all). Installed as ``mtrl_bench.methods``; importing
a module as ``methods.x`` from the repository root registers nothing twice."""

# imported in the order tables list them: the paper's baselines, gradient surgery, the
# torchjd gradient-combination family, SoCo-DT and its controls
from . import promptdt, mtdt, task_film, harmodt, pcgrad, cagrad  # noqa: F401, I001
from . import aggregators, socodt, random_masks, shared_mask, random_churn  # noqa: F401, I001
