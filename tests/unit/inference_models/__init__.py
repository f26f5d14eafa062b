"""Unit tests of the inference service's model catalogue and registry values."""
