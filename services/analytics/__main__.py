"""Run the analytics service: python -m services.analytics."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
