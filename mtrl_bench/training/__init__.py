"""Training: the Prompt-DT model, per-task masks as one autograd function, the batch sampler
and prompts, and the trainer that steps every task at once (methods plug into it through
:mod:`mtrl_bench.method`)."""
