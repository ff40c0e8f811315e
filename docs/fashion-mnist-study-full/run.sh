#!/usr/bin/env bash
# The Fashion-MNIST regularization study at the example file's size (784-1024-1024-10, 30 epochs,
# 12 TPE trials per variant, 9 variants, 10 seeds) on the 2-core CPU machine. It needs about
# 10 hours of an idle machine, more than a session, and a session's machine may not be the next
# one's, so its state travels in the repository between sessions (snapshot / restore).
#
#   run.sh setup COMMIT   the study folder ($STUDY_DIR, default /work/study-full) with a frozen copy
#                         of the code at COMMIT in src/, so that edits to the repository cannot
#                         reach the study's workers
#   run.sh run            start the study (first session), as (setsid nohup run.sh run >> LOG 2>&1 &)
#   run.sh resume         continue it: `sweep resume FILE` (a file that gained variants runs them)
#   run.sh snapshot       after stopping it (SIGINT to the driver, ~30 s): MLflow's store, Tune's
#                         state and the log, packed into state/ beside this script, to commit
#   run.sh restore        a new machine: the study folder back from state/, src/ from its commit
#
# The study completed in session 9 (2026-12-05); state/ left the tree then (its snapshots stay in
# git history) and final/ holds the end state: MLflow's store and the parent run's artifacts.
#
# MLflow's artifact URIs and Tune's experiment state hold absolute paths: restore to the same
# STUDY_DIR. Only the checkpoint each unfinished trial would restore from is kept (a finished
# trial's is never read again; each is ~22 MB), so an interrupted trial continues where it stopped.
#
# Everything is inside main(), which bash reads whole before running it: bash reads a plain
# script as it goes, so editing this file under a running study broke the study's shell.
# `.ci/run` and Ray's own `ray stop --force` kill the study's Ray: stop the study first.
set -euo pipefail

main() {
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel)"
study="${STUDY_DIR:-/work/study-full}"
state="$here/state"
file=src/sweeps/examples/fashion-mnist-regularization.yaml
export RAY_USAGE_STATS_ENABLED=0

case "${1:-}" in
  setup)
    commit="$(git -C "$repo" rev-parse "${2:?setup needs the commit whose code the study runs}")"
    mkdir -p "$study/src"
    git -C "$repo" archive "$commit" | tar -x -C "$study/src"
    echo "$commit" > "$study/src/COMMIT"
    echo "study folder $study, code of $commit" ;;
  run|resume)
    cd "$study"
    start=$(date +%s)
    # nice 19: the study takes only the CPU time nothing else wants. With the kernel's autogroup
    # scheduling, nice ranks processes only within their session: start this script with setsid
    # (its own session) and the session's group is niced too, so other sessions' work comes first
    echo 19 > /proc/self/autogroup 2>/dev/null || true
    PYTHONPATH=$PWD/src nice -n 19 python3 -m sweeps.cli "$1" "$file" && rc=0 || rc=$?
    echo "exit $rc after $(( $(date +%s) - start )) s" ;;
  snapshot)
    cd "$study"
    if pgrep -f "sweeps.cli (run|resume)" >/dev/null; then
      echo "the study is running: stop it first (kill -INT \$(pgrep -f 'sweeps.cli resume'))" >&2; exit 1
    fi
    mkdir -p "$state"
    # left out: every checkpoint of a finished trial (TERMINATED, ERROR in Tune's newest experiment
    # state), and an unfinished trial's checkpoints that the state does not point to (one written
    # after the state was last saved; Tune restores from the one it points to)
    python3 - > /tmp/study-exclude.txt <<'PY'
import glob, json, os, re
for folder in sorted(glob.glob("sweep_results/*/")):
    states = sorted(glob.glob(os.path.join(folder, "experiment_state-*.json")))
    if not states:
        continue
    with open(states[-1]) as f:
        trials = json.load(f)["trial_data"]
    for trial_json, runtime_json in trials:
        trial = json.loads(trial_json)
        keep = set() if trial["status"] in ("TERMINATED", "ERROR") else set(re.findall(r"checkpoint_\d+", runtime_json))
        for ckpt in glob.glob(os.path.join(glob.escape(folder), glob.escape(trial["relative_logdir"]), "checkpoint_*")):
            if os.path.basename(ckpt) not in keep:
                print(ckpt)
PY
    rm -f "$state"/study.tar.xz.part-*
    tar -c --no-wildcards --exclude-from=/tmp/study-exclude.txt --exclude=./src -C "$study" . \
      | xz -T2 -6 | split -b 45m - "$state/study.tar.xz.part-"
    { echo "snapshot of $study, $(date -u +%FT%TZ)"; echo "code: $(cat src/COMMIT)"
      echo "checkpoints left out (finished trials', superseded): $(wc -l < /tmp/study-exclude.txt)"
      (cd "$state" && sha256sum study.tar.xz.part-*); } > "$state/MANIFEST"
    du -sh "$state"; cat "$state/MANIFEST" ;;
  restore)
    [ ! -e "$study/mlflow.db" ] || { echo "$study/mlflow.db exists: not overwriting it" >&2; exit 1; }
    (cd "$state" && sed -n '/  study.tar.xz.part-/p' MANIFEST | sha256sum -c --quiet)
    mkdir -p "$study"
    cat "$state"/study.tar.xz.part-* | xz -d | tar -x -C "$study"
    "$0" setup "$(sed -n 's/^code: //p' "$state/MANIFEST")" ;;
  *)
    echo "usage: $0 setup COMMIT | run | resume | snapshot | restore" >&2; exit 2 ;;
esac
}

main "$@"
exit $?
