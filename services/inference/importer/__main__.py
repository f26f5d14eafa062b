"""Run the importer: python -m services.inference.importer (the Makefile's model-import and `make up` call it)."""

import sys

from .convert import main

sys.exit(main())
