"""The catalog's feature-cache folder per profile (bot/service/catalog_layout.py)."""

from __future__ import annotations

import dataclasses

from bot.service.catalog_layout import features_key
from engine.profiles import PROFILES


def test_the_tagger_is_part_of_the_feature_cache_key() -> None:
    paper = PROFILES["paper"]
    # analyses tagged by AST's head (before the paper profile tagged with musicnn) are not reused
    assert features_key(paper) != features_key(dataclasses.replace(paper, tagger="music"))
    assert features_key(paper).startswith("paper-")
    # profiles whose music encoder tags keep their folder (the lite demo catalog is not re-analysed)
    lite = PROFILES["lite"]
    assert features_key(lite) == features_key(dataclasses.replace(lite, tagger="music"))
