#!/usr/bin/env bash
# MeZO with Rademacher directions in protocol v2 (issue 23's cheaper stream on issue 22's protocol):
# MeZO's lr 3e-5 (not swept: E[z z^T] = I for both streams), 5 paired seeds. Run from a clone pinned
# at one revision that has the Rademacher stream (rows carry git_rev), e.g.
#   git clone -q /work/main /work/pgap-rad && git -C /work/pgap-rad checkout -q 1d07af2
#   (build or copy a _C of that revision into /work/pgap-rad/pgap_kernels/)
#   cd /work/pgap-rad && PY=/work/main/.venv/bin/python V2_CSV=/work/main/bench/results/compare_v2.csv \
#     nohup nice -n 19 bench/experiments/run_rademacher_v2.sh >> /work/main/bench/results/compare_v2_rademacher.log 2>&1 &
# Resumable like run_protocol_v2.sh (a killed run restarts from step 0, skipping written checkpoints).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
CSV=${V2_CSV:-bench/results/compare_v2.csv}
export PYTHONPATH="$PWD:$PWD/python${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
echo "== $(date -u +%FT%TZ) rademacher final (rev $(git rev-parse --short HEAD))"
"$PY" -m bench.experiments.compare --csv "$CSV" --threads 1 --phase final --seeds 0 1 2 3 4 \
  --grid "mezo:distribution=rademacher=3e-5"
