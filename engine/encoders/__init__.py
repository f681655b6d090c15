"""Frozen backbones that turn frames, words and music into features (paper section 4.1)."""
