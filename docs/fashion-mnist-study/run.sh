#!/usr/bin/env bash
# The Fashion-MNIST regularization study as run for docs/results.md (budget reduced to fit one session on 2 cores).
cd "$(dirname "$0")"
export RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)
PYTHONPATH=/work/study/src nice -n 10 python3 -m sweeps.cli run /work/study/src/sweeps/examples/fashion-mnist-regularization.yaml \
  --set parameters.hidden_size=256 --set parameters.epochs=20 \
  --set search.trials=8 --set early_stopping.grace_period=3
echo "exit $? after $(( $(date +%s) - start )) s"
