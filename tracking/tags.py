"""Tag names written on every sweep run. Stable: users filter on them in the MLflow UI."""

SWEEP_NAME = "sweep.name"  # the sweep file's name
SWEEP_ID = "sweep.id"  # one execution of a sweep (parent run and its children share it)
ROLE = "sweep.role"  # "parent" or "trial"
TRIAL_ID = "sweep.trial_id"  # Ray Tune's trial id
VARIANT = "sweep.variant"  # studies: the variant a run belongs to (absent without variants)
BASELINE_VARIANT = "sweep.baseline_variant"  # on the parent of a study: the variant others are tested against
STAGE = "sweep.stage"  # search | repeat | summary
CONFIG_ID = "sweep.config_id"  # repeats: which of the top configurations (rank1, rank2, ...)
SEED = "sweep.seed"  # repeats: the seed of this run
SOURCE_TRIAL = "sweep.source_trial_id"  # repeats and summaries: the search trial the config came from
CV_FOLDS = "sweep.cv_folds"  # a cross-validated search trial: its number of folds (absent without CV)
TRIAL_STATUS = "sweep.trial_status"  # completed | stopped_early | failed | running
STOPPED_EPOCH = "sweep.stopped_epoch"  # last epoch of a trial ASHA stopped
FAILURE_REASON = "sweep.failure_reason"  # why a trial failed
UNEVALUATED = "sweep.unevaluated"  # why a trial that ended has no end-of-trial metrics (test_*, plots)
NODE_ID = "sweep.node_id"  # the Ray node that ran (or last resumed) the trial
RESTARTS = "sweep.restarts"  # how many times a retried or resumed trial reopened this run
RESUMED_FROM_EPOCH = "sweep.resumed_from_epoch"  # the checkpoint epoch the last restart continued after
HOST = "sweep.host"  # that node's host name and IP
DEVICE = "sweep.device"  # cpu, or cuda with the GPU ids Ray assigned
WORKER_PID = "sweep.worker_pid"  # the process that ran (or last resumed) the trial
BEST_TRIAL = "sweep.best_trial_id"  # on the parent: the best trial
BEST_RUN = "sweep.best_run_id"  # on the parent: the best trial's child run
BEST_SUMMARY_RUN = "sweep.best_summary_run_id"  # on the parent: the repeats summary of the best configuration
METRIC = "sweep.metric"  # on the parent: the metric and goal searched
RESUMES = "sweep.resumes"  # on the parent: how many times `sweep resume` continued this execution
SWEEP_STATUS = "sweep.status"  # on the parent: completed | interrupted | failed

# a metric the sweep itself logs on every trial run (the trainer's metrics are its own): the trial
# process's CPU seconds so far (all its threads: start-up, epochs and, at the end, evaluation),
# logged with each epoch and once more when the trial ends
CPU_SECONDS = "trial_cpu_seconds"

PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nesting tag
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"

COMPLETED = "completed"
STOPPED_EARLY = "stopped_early"
FAILED = "failed"
RUNNING = "running"
