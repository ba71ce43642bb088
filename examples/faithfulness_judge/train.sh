#!/usr/bin/env bash
# Train the faithfulness judge (issue 17, item 1) on VitaminC from the BIG-bench 1.0.0 sdist and
# measure it on a held-out split and on a different source (XSum / CNN-DM summary pairs).
# NOT RUN YET: on this 2-core shared machine one run is ~10-15 minutes (--max-steps bounds it).
#
#   examples/faithfulness_judge/train.sh
#
# 1. make_data.py: pip download --no-deps bigbench==1.0.0 (cached), convert, write data/ (ignored)
# 2. slmflow train agent: LoRA r=8 on SmolLM2-135M, 250 steps x 8 pairs, one torch thread, gated
#    against the zero-shot base on data/eval.jsonl, registered under a scratch SLMFLOW_HOME
# 3. slmflow eval calibrate faithfulness (-o adapter=...) on data/heldout_vitaminc.jsonl and
#    data/summaries.jsonl: accuracy, kappa, per-label recall, cases/s, best threshold
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 SLMFLOW_TRACING=off
PY=${PY:-.venv/bin/python}
SLMFLOW=${SLMFLOW:-.venv/bin/slmflow}
EX=examples/faithfulness_judge
SCRATCH=${SCRATCH:-${SLMFLOW_HOME:-.slmflow}/faithfulness-judge}

"$PY" $EX/make_data.py --train 2000 --eval 200 --heldout 400
mkdir -p "$SCRATCH"
SLMFLOW_HOME="$SCRATCH" "$SLMFLOW" train agent faithfulness_judge --workflow $EX/workflow.yaml \
    --data $EX/data/train.jsonl --eval-data $EX/data/eval.jsonl \
    --r 8 --targets q_proj,k_proj,v_proj,o_proj --lr 1e-3 --batch-size 8 --max-steps 250 \
    --max-len 384 --threads 1 --seed 0 --out "$SCRATCH/run"
