"""Offline datasets: the file format and loading, generation from Meta-World's scripted
experts, the paper's own HarmoDT/MTDiff layout, and the summaries ``mtrl-bench data`` prints."""
