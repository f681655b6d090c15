"""bot/service/turns.py: whether a catalog's "fusion" vectors may answer this engine's fusion queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.service.errors import CatalogMismatchError
from bot.service.turns import check_fusion_vectors, fusion_mismatch
from engine.checkpoint import save_checkpoint
from engine.engine import Engine, EngineConfig
from engine.fusion import FusionConfig, MuseChatRecommender
from engine.music_towers import fusion_id


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fusion checkpoint without towers (tiny sizes)."""
    cfg = FusionConfig(profile="tiny", video_dim=32, text_dim=32, music_dim=32, target_music_dim=32, n_layers=1)
    return save_checkpoint(MuseChatRecommender(cfg).eval(), tmp_path_factory.mktemp("plain") / "ckpt")


# (checkpoint, the catalog points' fusion_id, refused?): nothing is loaded to decide
CASES = [
    ("none", "", False),  # zero-shot: the fusion vectors are not searched
    ("none", "0123456789abcdef", False),
    ("plain", "", False),  # a catalog built before fusion ids were recorded: as before, without towers
    ("plain", "own", False),
    ("plain", "0123456789abcdef", True),  # another checkpoint's vectors
    ("towers", "own", False),
    ("towers", "", True),  # built without these towers (or before ids were recorded): never with towers
    ("towers", "0123456789abcdef", True),
]


@pytest.mark.parametrize(("ckpt", "recorded", "refused"), CASES)
def test_fusion_vectors_of_other_weights_are_refused(plain: Path, tiny_towers: Path, ckpt: str, recorded: str, refused: bool) -> None:
    path = {"none": None, "plain": plain, "towers": tiny_towers}[ckpt]
    engine = Engine(EngineConfig(profile="tiny", fusion_checkpoint=path))
    if recorded == "own":
        recorded = fusion_id(path)
    why = fusion_mismatch(engine, recorded)
    assert (why is not None) is refused
    if refused:
        assert "run `musechat catalog refresh`" in why and str(path) in why and fusion_id(path) in why
        assert ("trained AST towers" in why) is (ckpt == "towers")
        with pytest.raises(CatalogMismatchError) as e:
            check_fusion_vectors(engine, recorded)
        assert e.value.user_message == why
    assert engine._fusion is None and engine._encoders is None  # decided from the files alone
