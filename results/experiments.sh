#!/usr/bin/env bash
# The planned experiments of results/README ("Questions and plan"), as the sweeps that make
# them. Run from a clean install of the commit named in results/README (a separate
# checkout, so editing this one never changes a sweep midway), with RESULTS pointing at
# this folder. Finished runs are skipped: rerun the script to resume.
#   bash results/experiments.sh [E2|E4|E3|E1|all]      (default: all, in the planned order)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-$PWD/results}
RUN=(-- --preset cpu --no-progress)
sweep() { mtrl-bench sweep --suites mt5 --results-dir "$RESULTS" "$@"; }

e2() {  # mechanism controls at the committed 112k protocol
    sweep --methods shared-mask task-film --qualities near-optimal sub-optimal \
        --seeds 0 1 2 3 4 "${RUN[@]}"
    sweep --methods random-masks --qualities near-optimal sub-optimal --seeds 0 1 2 3 4 \
        --grid "random_masks.initial_sparsity=0.05,0.5" "${RUN[@]}"
}
e4() {  # the torchjd gradient family on near-optimal data
    sweep --methods upgrad nash-mtl imtl-g rlw --qualities near-optimal --seeds 0 1 2 3 4 \
        "${RUN[@]}"
}
e3() {  # TAMU with room (variants probed in results/README) and random churn
    sweep --methods socodt --qualities near-optimal sub-optimal --seeds 0 1 2 3 4 \
        "${RUN[@]}" --gin-file configs/variants/socodt-room.gin
    sweep --methods harmodt-f --qualities near-optimal sub-optimal --seeds 0 1 2 3 4 \
        "${RUN[@]}" --gin-file configs/variants/harmodt-f-room.gin
    sweep --methods random-churn --qualities near-optimal sub-optimal --seeds 0 1 2 3 4 \
        "${RUN[@]}" --gin-file configs/variants/random-churn-room.gin
}
e1() {  # 4x the budget, fixed-goal evaluations every 56k sequences
    # The planned check: 112k runs made here, whose trajectories the first 112k sequences
    # of promptdt and random-masks must repeat bit for bit and socodt's must not
    # (results/probe: never in a table; socodt's added while E1 ran).
    RESULTS="$RESULTS/probe" sweep --methods promptdt random-masks socodt \
        --qualities near-optimal sub-optimal --seeds 0 "${RUN[@]}"
    sweep --methods promptdt random-masks socodt --qualities near-optimal sub-optimal \
        --seeds 0 1 2 3 4 "${RUN[@]}" --gin-binding "Run.budget_sequences = 448000"
}

case "${1:-all}" in
    E2) e2 ;; E4) e4 ;; E3) e3 ;; E1) e1 ;;
    all) e2; e4; e3; e1 ;;
    *) echo "usage: $0 [E2|E4|E3|E1|all]" >&2; exit 2 ;;
esac
