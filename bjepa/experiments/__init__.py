"""Experiment drivers shared by the CLI and the ``examples/`` scripts."""
