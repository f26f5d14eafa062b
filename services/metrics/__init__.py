"""The metrics service: quality scoring, reference metrics, evaluations and statistical comparisons."""
