"""Metric and tag names, defined once and used by training, Tune, MLflow and tests."""

TRAIN_LOSS = "train_loss"
PROBE_ACCURACY = "probe_accuracy"
KNN_ACCURACY = "knn_accuracy"
EMBEDDING_STD = "embedding_std"
EFFECTIVE_RANK = "effective_rank"
PROBE_LIFT = "probe_lift"
EPOCH = "epoch"

# The metric Optuna maximises.
SEARCH_METRIC = PROBE_ACCURACY
SEARCH_MODE = "max"

# MLflow tags.
TAG_ROLE = "jepa.role"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"
ROLE_BASELINE = "baseline"
TAG_BACKBONE = "jepa.backbone"
TAG_DATASET = "jepa.dataset"
TAG_STATUS = "jepa.status"
TAG_TRIAL_ID = "jepa.trial_id"
TAG_NODE = "jepa.node"
TAG_SWEEP_NAME = "jepa.sweep"

# Artifact names.
TSNE_ARTIFACT = "tsne_embeddings.png"
PREDICTOR_ARTIFACT = "predictor.pt"
CONFIG_ARTIFACT = "config.yaml"

# Where a trial's time goes (seconds), logged to each trial run; see README, "Embedding
# cache and performance". overhead = trial - train - backbone - eval: what the trial
# spends on orchestration (MLflow, Ray Train start-up and shut-down, reporting).
TIME_TRIAL = "time_trial_s"
"""Trial driver: from entering the trainable to `TorchTrainer.fit` returning."""
TIME_TRAIN = "time_train_s"
"""Rank 0: training epochs, with their diagnostics, without logging and reporting."""
TIME_BACKBONE = "time_backbone_s"
"""Rank 0: embedding the clean views inside the trial (only with the cache off)."""
TIME_EVAL = "time_eval_s"
"""Rank 0: final evaluation: probe, kNN, collapse metrics and the t-SNE picture."""
TIME_OVERHEAD = "time_overhead_s"
TIME_STARTUP = "time_startup_s"
"""Trial driver start to rank 0's training loop start (run creation, Ray Train start-up)."""
