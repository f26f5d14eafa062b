"""Moderations (docs/batches.md "Moderations"): a TF-IDF + logistic-regression classifier trained on data
that ships here, or a registered upstream."""
