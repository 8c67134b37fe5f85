#!/usr/bin/env bash
# Train the example's model (model.py) on the example's dataset (make_dataset.py) with
# a local learning cluster: 4 validators and 4 trainers as processes on this machine.
#
#   examples/custom_model/run.sh [CLUSTER UP OPTION...]
#
# Run it with flobc's virtualenv first on PATH (`source .venv/bin/activate`). Options
# go to `flobc cluster up` after the example's own, so they win: `--rounds 3`,
# `--trainers 2`, `--keep DIR` (keep the testnet). The dataset and the rounds' history
# are written to $WORK (default: ./custom-model).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${WORK:-custom-model}"
python "$here/make_dataset.py" --out "$work/rotated_digits.npz"
# Every node (and the cluster's own accuracy monitor) imports `model` from this folder.
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
flobc cluster up --model model:build --dataset file \
    --dataset-file "$work/rotated_digits.npz" --history "$work/history.json" \
    --rounds 10 "$@"
