"""mtrl-bench: offline multi-task RL on Meta-World with per-task parameter masks."""

__version__ = "0.1.0"
