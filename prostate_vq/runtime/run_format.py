"""The columns of a VQ-VAE run's history.csv: what training writes and the report reads back (here, below
training, so that reporting checks a run folder without importing the training loop).

train_loss includes the quantizer's auxiliary terms (what the optimizer minimises); val_loss is the task loss
alone (what selection and early stopping use); the quantizer terms have columns of their own."""

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_ssim",
    "val_dice",
    "codebook_usage_pct",
    "perplexity",
    "dead_codes_restarted",
    "lr",
    "seconds",
    "train_quantizer_loss",
    "val_quantizer_loss",
    "step",
)
