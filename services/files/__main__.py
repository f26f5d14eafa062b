"""Run the files service: python -m services.files."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
