"""MuseChat engine: media decoding, encoders, MVT-Fusion, scoring, steering, reasoner.

Models and inference only: no database, no platform, no network, no argparse (DESIGN.md).
"""
