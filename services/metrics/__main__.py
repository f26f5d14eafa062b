"""Run the metrics service: python -m services.metrics."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
