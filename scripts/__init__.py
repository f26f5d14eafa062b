"""Developer scripts: stub generation, vendoring, and `make up`."""
