"""Run the auth service: python -m services.auth."""

from llmlab.runtime import main

from .app import SPEC

main(SPEC)
