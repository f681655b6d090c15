"""MuseChat training: datasets, feature caches, training loops and evaluation."""
