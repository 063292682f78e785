"""A control for the mechanism behind masks: task identity in every layer, no sparsity.

Per-task masks hard-wire which task is running into every layer. MTDT's single task-ID
token at the input scores like Prompt-DT, so identity at the input alone does not explain
the masks' gain; this control gives Prompt-DT a per-task scale and shift after each of
every block's two layer norms (FiLM, Perez et al. 2018), initialised to the identity:
tasks x layers x 2 layer norms x (scale, shift) x width parameters, every weight shared and
dense. If it matches the masked methods, per-layer task identity is enough.
"""

from __future__ import annotations

from mtrl_bench.method import Method, register_method


@register_method("task-film", role="baseline", order=12)
class TaskFiLM(Method):
    """Control: Prompt-DT + per-task scale and shift after every block's layer norms."""

    conditioning = "prompt-film"
