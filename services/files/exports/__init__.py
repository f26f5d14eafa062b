"""Exports and reports of experiments: what is read (source), how it is laid out (tables), and the renderers."""
