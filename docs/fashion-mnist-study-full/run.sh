#!/usr/bin/env bash
# The Fashion-MNIST regularization study at the example file's size (784-1024-1024-10, 30 epochs,
# 12 TPE trials per variant, 7 variants, 10 seeds), on the 2-core CPU machine, from a frozen copy
# of the code (src/), at nice 19 so that it only takes the CPU time nothing else wants.
# First session: `run`; later sessions: `resume` (Ray Tune's state is in sweep_results/).
cd "$(dirname "$0")"
export RAY_USAGE_STATS_ENABLED=0
start=$(date +%s)
if [ "${1:-run}" = resume ]; then
  # by file: a study that gained variants (session 6: batchnorm_dropout) runs them; the same file changes nothing
  PYTHONPATH=$PWD/src nice -n 19 python3 -m sweeps.cli resume src/sweeps/examples/fashion-mnist-regularization.yaml
else
  PYTHONPATH=$PWD/src nice -n 19 python3 -m sweeps.cli run src/sweeps/examples/fashion-mnist-regularization.yaml
fi
echo "exit $? after $(( $(date +%s) - start )) s"
