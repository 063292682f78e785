"""Evaluation: a pool of Meta-World environments in worker processes, the evaluator that
rolls out every task x goal at once, the policies it drives (a trained Prompt-DT, the
scripted experts), and Meta-World's own evaluator as the cross-check."""
