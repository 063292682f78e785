"""Runs: the run loop, the run directory it writes (layout, lock, metrics log), sweeps of
independent runs, and the optional wandb mirror."""
