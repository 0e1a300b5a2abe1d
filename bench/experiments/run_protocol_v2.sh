#!/usr/bin/env bash
# Protocol v2's queue (issue 22; docs/finetune.md "Protocol v2"), one run at a time on one thread:
#   1. lr sweep, seed 0, dev only, 600 forwards: MeZO and backprop AdamW;
#   2. final, 5 paired seeds, 1,200 forwards: MeZO and AdamW at the sweep's lr ("best");
#   3. P-GAP (activation subspace, pgap-finetune's default method): sweep, then final;
#   4. the rest of the SGD sweep (the finals need only AdamW as the first-order ceiling);
#   5. controls (issue 22 item 3): SubZero (random subspace, no alignment) and P-GAP in its probe
#      subspace, both at the default scale sqrt(m*n)/r: sweep, then final.
# Every step is resumable: run the script again and bench/experiments/compare.py skips the runs
# its CSV holds (a run killed part-way restarts from step 0 and does not rewrite its checkpoints).
#
# All rows of one table should come from one training code revision, so run the queue from a
# clean clone pinned at a commit, writing into the checkout's CSV:
#   git clone -q /work/main /work/pgap-v2 && git -C /work/pgap-v2 checkout -q <rev>
#   cp /work/main/pgap_kernels/_C*.so /work/pgap-v2/pgap_kernels/
#   cd /work/pgap-v2 && PY=/work/main/.venv/bin/python V2_CSV=/work/main/bench/results/compare_v2.csv \
#     nohup nice -n 19 bench/experiments/run_protocol_v2.sh first-order >> /work/main/bench/results/compare_v2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
CSV=${V2_CSV:-bench/results/compare_v2.csv}
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
run() { echo "== $(date -u +%FT%TZ) $*"; "$PY" -m bench.experiments.compare --csv "$CSV" --threads 1 "$@"; }

# Two queues may run side by side (one thread each): `run_protocol_v2.sh first-order` (MeZO and the
# backprop baselines) and `run_protocol_v2.sh pgap`, then `run_protocol_v2.sh controls`; no argument
# runs all three one after the other.
first_order() {
  run --phase sweep --seeds 0 --grid mezo=1e-5,3e-5,1e-4 backprop-adamw=1e-5,3e-5,1e-4
  run --phase final --seeds 0 1 2 3 4 --grid mezo=best backprop-adamw=best
  run --phase sweep --seeds 0 --grid backprop-sgd=1e-3,1e-2,1e-1
}
pgap() {
  run --phase sweep --seeds 0 --grid pgap=1e-5,3e-5,1e-4
  run --phase final --seeds 0 1 2 3 4 --grid pgap=best
}
controls() {
  run --phase sweep --seeds 0 --grid subzero=1e-5,3e-5,1e-4 "pgap:subspace=probe=1e-5,3e-5,1e-4"
  run --phase final --seeds 0 1 2 3 4 --grid subzero=best "pgap:subspace=probe=best"
}
case "${1:-all}" in
  first-order) first_order ;;
  pgap) pgap ;;
  controls) controls ;;
  all) first_order; pgap; controls ;;
  *) echo "usage: $0 [first-order|pgap|controls|all]" >&2; exit 2 ;;
esac
echo "== $(date -u +%FT%TZ) queue ${1:-all} done"
