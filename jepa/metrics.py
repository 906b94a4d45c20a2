"""Metric and tag names, defined once and used by training, Tune, MLflow and tests."""

TRAIN_LOSS = "train_loss"
# The three splits (jepa.data): the search sees validation scores only; the test split's
# score is reported, never selected on.
VAL_PROBE_ACCURACY = "val_probe_accuracy"
"""Standardised linear probe (jepa.probe.linear_probe) on the validation split."""
PROBE_ACCURACY = "probe_accuracy"
"""The same probe on the test split."""
PROBE_ACCURACY_PLAIN = "probe_accuracy_plain"
"""The seed's probe (unstandardised, scikit-learn defaults) on the test split."""
BASELINE_PROBE_ACCURACY = "baseline_probe_accuracy"
"""The raw backbone's probe_accuracy at the trial's seed."""
KNN_ACCURACY = "knn_accuracy"
"""kNN accuracy on the validation split (per epoch: what ASHA prunes on)."""
EMBEDDING_STD = "embedding_std"
EFFECTIVE_RANK = "effective_rank"
# The output's embedding_std over the raw backbone's (the collapse rule's first sign),
# and the backbone's own values the rule compares against (see jepa.train).
EMBEDDING_STD_RATIO = "embedding_std_ratio"
BACKBONE_EMBEDDING_STD = "backbone_embedding_std"
BACKBONE_EFFECTIVE_RANK = "backbone_effective_rank"
PROBE_LIFT = "probe_lift"
"""probe_accuracy - baseline_probe_accuracy (test split, same seed)."""
EPOCH = "epoch"

# The metric Optuna maximises, ASHA's (per epoch) and the parent run's param naming it.
SEARCH_METRIC = VAL_PROBE_ACCURACY
SEARCH_MODE = "max"
ASHA_METRIC = KNN_ACCURACY
PARAM_SEARCH_METRIC = "search_metric"

# The parent run's answer: the best config (chosen on validation, collapsed and
# diverged trials excluded), its mean test score over its seeds with a t-based 95%
# interval, and its lift over the raw backbone paired on the same seeds and splits
# (the untrained predictor's too).
TEST_PROBE_ACCURACY = "test_probe_accuracy"
TEST_PROBE_LIFT = "test_probe_lift"
TEST_PROBE_LIFT_UNTRAINED = "test_probe_lift_untrained"
CI_LOW = "_ci95_low"
CI_HIGH = "_ci95_high"
"""Suffixes of an interval's bounds: `test_probe_accuracy_ci95_low` etc."""
BEST_SEEDS = "best_config_seeds"
"""How many seeds the best config ran with (the n of its interval)."""
# MLflow tags.
TAG_ROLE = "jepa.role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
ROLE_BASELINE = "baseline"
TAG_BACKBONE = "jepa.backbone"
TAG_DATASET = "jepa.dataset"
TAG_STATUS = "jepa.status"
# The collapse verdict (jepa.train.collapse_verdict): none; scale = the outputs' spread
# shrank (the information between images may remain); information = the variation
# between images lost most of its directions, or the kNN fell to chance.
TAG_COLLAPSE = "jepa.collapse"
COLLAPSE_NONE = "none"
COLLAPSE_SCALE = "scale"
COLLAPSE_INFORMATION = "information"
COLLAPSE_VERDICTS = (COLLAPSE_NONE, COLLAPSE_SCALE, COLLAPSE_INFORMATION)
"""In rising severity: a run's verdict is the most severe one of its epochs."""
TAG_TRIAL_ID = "jepa.trial_id"
TAG_ATTEMPT = "jepa.attempt"  # 1, 2, ...: a trial retried after a failure gets a new run
# Where rank 0 of the trial's Ray Train workers ran: "HOST (IP) node ID12" for people,
# and the parts on their own for searches (`tags."jepa.node_id" = '...'`).
TAG_NODE = "jepa.node"
TAG_NODE_ID = "jepa.node_id"
TAG_NODE_IP = "jepa.node_ip"
TAG_HOST = "jepa.host"
TAG_SWEEP_NAME = "jepa.sweep"
# "true" on a trial-like run made by `python -m jepa.train` outside any sweep.
TAG_SINGLE = "jepa.single"
TAG_BEST_RUN = "jepa.best_run_id"
TAG_BEST_MODEL = "jepa.best_model_uri"  # models:/jepa-predictor/N, the best run's predictor
# Which baseline a baseline run is: the raw backbone or the untrained predictor.
TAG_BASELINE = "jepa.baseline"
BASELINE_RAW = "raw_backbone"
BASELINE_UNTRAINED = "untrained_predictor"
# "true" on a sweep whose trials all collapsed or diverged: it has no best config.
TAG_ALL_COLLAPSED = "jepa.all_collapsed"

# Artifact names.
TSNE_ARTIFACT = "tsne_embeddings.png"
PREDICTOR_ARTIFACT = "predictor.pt"
CONFIG_ARTIFACT = "config.yaml"

# Where a trial's time goes (seconds), logged to each trial run; see README, "Embedding
# cache and performance". overhead = trial - train - backbone - eval: what the trial
# spends on orchestration (MLflow, Ray Train start-up and shut-down, reporting).
TIME_TRIAL = "time_trial_s"
"""The Tune trial: from entering the trainable to the pool's last row for it."""
TIME_TRAIN = "time_train_s"
"""Rank 0: training epochs, with their diagnostics, without logging and reporting."""
TIME_BACKBONE = "time_backbone_s"
"""Rank 0: embedding the clean views inside the trial (only with the cache off)."""
TIME_EVAL = "time_eval_s"
"""Rank 0: final evaluation: probe, kNN, collapse metrics and the t-SNE picture."""
TIME_OVERHEAD = "time_overhead_s"
TIME_STARTUP = "time_startup_s"
"""The trial's start to rank 0's training loop start (run creation, waiting for a pool
group: its Ray Train start-up for a group's first trial)."""
TIME_METRICS = (TIME_TRIAL, TIME_STARTUP, TIME_TRAIN, TIME_BACKBONE, TIME_EVAL, TIME_OVERHEAD)
"""Every timing a trial run logs, in the order the benchmarks print them."""
