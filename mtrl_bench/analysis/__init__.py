"""Analysis of finished runs: grouping into cells, seed-level statistics, the paper-style
tables and their rendering, the paper's own numbers, and figures."""
