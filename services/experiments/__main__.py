"""Run the experiments service: python -m services.experiments."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
