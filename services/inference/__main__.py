"""Run the inference service: python -m services.inference."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
