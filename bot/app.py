"""The composition root: settings -> SQL engine, catalog, media store, models, service, admin, model pool.

Every entry point builds the application here (CLI commands, `musechat serve`, tests, benchmarks)
and nothing else opens storage. One `App` per process:

- the SQL engine (SQLite file by default, PostgreSQL by URL), migrated to head when embedded;
- the catalog, opened ONCE: the embedded catalog takes a directory lock that a second open would
  refuse even inside this process, so the conversation service, the catalog admin and the
  scheduled refresh all share this one;
- the media store; the model pool (interactive and catalog lanes, bot/service/pool.py) and the
  model runner (bot/jobs/: this pool, or SAQ workers when `MUSECHAT_MODEL_RUNNER=saq`);
- the conversation service (`await app.service()`: loads the models once; with the SAQ runner it
  loads none, every model job being the workers') and the catalog admin
  (`app.admin()`: shares the service's encoders once they are loaded, else loads its own lazily,
  only when a refresh has something to embed);
- for `musechat worker`: `App.open(..., catalog=False)` (a worker needs no catalog, and must not
  take the embedded catalog's lock) and `await app.worker_runner()` (the models, loaded once).

The `tiny` profile has random weights: its recommendations are noise. Chats and `serve` refuse it
unless `MUSECHAT_ALLOW_RANDOM_WEIGHTS` (or `allow_random_weights=True`, for tests) says otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.service.catalog_admin import CatalogAdmin, load_fusion
from bot.service.catalog_layout import (
    FEATURES_DIR,
    FeatureCache,
    TowerCache,
    catalog_schema,
    features_key,
)
from bot.service.conversation import ConversationService, ServiceConfig, TrackAssets
from bot.service.errors import ConversationError, SettingsError
from bot.service.pool import ModelPool, settle_heap
from bot.settings import Settings
from storage.catalog import MusicCatalog, open_catalog
from storage.conversation_store import ConversationStore
from storage.db import ensure_schema, make_engine
from storage.media_store import MediaStore, RetentionPolicy
from storage.track_store import TrackStore

log = logging.getLogger(__name__)

RANDOM_PROFILES = frozenset({"tiny"})  # profiles whose weights are random (tests)
SWITCH_INTERVAL_S = 0.001  # seconds a thread may hold the GIL while another waits (Python's default: 0.005)
GPU_BATCH_SIZE = 8  # a worker on a GPU batches up to this many concurrent requests of one kind (MUSECHAT_WORKER_BATCH_SIZE unset)

Progress = Callable[[str], None]


class RandomWeightsError(ConversationError):
    """A chat or `serve` asked to run a profile with random weights."""


class App:
    """One process's storage, models and services (module docstring). Use `await App.open(...)`, then `close()`."""

    def __init__(
        self, *, settings: Settings, sql: Any, catalog: MusicCatalog, media: MediaStore, profile: str,
        config: ServiceConfig, pool: ModelPool, sql_schema: str | None = None, encoders: Any = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.sql = sql
        self.catalog = catalog
        self.media = media
        self.profile = profile
        self.config = config
        self.pool = pool
        self.sql_schema = sql_schema
        self._encoders = encoders  # engine.profiles.Encoders already loaded (tests, benchmarks); None: load them
        self._service: ConversationService | None = None
        self._service_lock = asyncio.Lock()
        self._admin: CatalogAdmin | None = None
        self._runner: Any = None  # bot/jobs/saq_runner.py SaqRunner when the service sends its model jobs to workers
        self._closers: list[Callable[[], None]] = []  # closed with the app (a worker's batchers and reasoner)
        self._closed = False

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        profile: str | None = None,
        config: ServiceConfig | None = None,
        sql_schema: str | None = None,
        encoders: Any = None,
        progress: Progress | None = None,
        catalog: bool = True,
    ) -> App:
        """Open storage (not the models: `service()` loads them). Raises the storage layer's errors
        (an unreachable database, an outdated PostgreSQL schema, a locked embedded catalog)."""
        from engine.profiles import resolve_profile

        say = progress or (lambda _: None)
        profile = profile or settings.profile
        cfg = resolve_profile(profile, settings.backbone_overrides)  # an unknown profile fails here, before any I/O
        config = config or settings.service_config()
        say("checking the database")
        if settings.sql_url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        await ensure_schema(settings.sql_url, schema=sql_schema)
        sql = make_engine(settings.sql_url, schema=sql_schema)
        store: Any = None
        try:
            if catalog:
                say("opening the catalog")
                store = await asyncio.to_thread(
                    open_catalog, url=settings.qdrant_url, api_key=settings.qdrant_api_key, path=settings.catalog_dir,
                    schema=catalog_schema(cfg, fusion=settings.fusion_checkpoint is not None),
                )  # fmt: skip
            media = MediaStore(
                settings.media_dir,
                max_file_bytes=settings.max_upload_bytes,
                retention=RetentionPolicy(
                    max_age_s=settings.media_max_age_days * 86400.0, max_total_bytes=int(settings.media_max_total_mb * 2**20)
                ),
            )
        except BaseException:  # nothing half-open is left behind
            if store is not None:
                store.close()
            await sql.dispose()
            raise
        pool = ModelPool(config.workers)
        return cls(
            settings=settings, sql=sql, catalog=store, media=media, profile=profile, config=config, pool=pool,
            sql_schema=sql_schema, encoders=encoders,
        )  # fmt: skip

    # --- the conversation service ---------------------------------------------------------------

    async def service(self, *, allow_random_weights: bool | None = None, progress: Progress | None = None) -> ConversationService:
        """The conversation service, its models loaded and warmed up once per process."""
        self.check_weights(allow_random_weights)
        async with self._service_lock:
            if self._service is None:
                self._service = await self._build_service(progress or (lambda _: None))
        return self._service

    def check_weights(self, allow_random_weights: bool | None = None) -> None:
        """Refuse a profile with random weights unless allowed (module docstring): before any slow work."""
        allowed = self.settings.allow_random_weights if allow_random_weights is None else allow_random_weights
        if self.profile in RANDOM_PROFILES and not allowed:
            raise RandomWeightsError(
                f"The '{self.profile}' profile has random weights (for tests): its picks are noise. "
                "Use MUSECHAT_PROFILE=lite, or set MUSECHAT_ALLOW_RANDOM_WEIGHTS=1 to run it anyway."
            )

    async def _load_engine(self, say: Progress, *, load: bool = True) -> tuple[Any, TrackAssets]:
        """The engine of this app's profile, warmed up, and the indexer's per-track assets it reads.

        `load=False`: the models stay unloaded (a front-end whose model jobs all go to workers)."""
        from engine.engine import Engine

        engine_config = dataclasses.replace(self.settings.engine_config(), profile=self.profile)
        engine = Engine(engine_config, encoders=self._encoders)
        if load:
            say(f"loading the '{self.profile}' models")
            await asyncio.to_thread(engine.warm_up)
        from engine.profiles import resolve_profile

        # the key names backbones, not sizes: the declared profile names the same folder as the loaded one
        profile = engine.encoders.profile if load else resolve_profile(self.profile, engine_config.overrides)
        features = FeatureCache(Path(self.settings.data_dir) / FEATURES_DIR / features_key(profile))
        # trained AST towers: the candidate clips g_mc reads live in the checkpoint's own cache (catalog_layout.py)
        towers = TowerCache(Path(self.settings.data_dir), profile, engine.fusion_id) if engine.fusion_towers else None
        return engine, TrackAssets(TrackStore(self.sql), features, towers)

    async def _build_service(self, say: Progress) -> ConversationService:
        if self.settings.model_runner not in ("local", "saq"):
            raise SettingsError(f"unknown model runner {self.settings.model_runner!r} (MUSECHAT_MODEL_RUNNER): choose local or saq")
        # with workers (saq) every model job is theirs: video features, query + re-rank, excerpts, previews,
        # reasons; the front-end keeps the catalog, the database and the media store, and loads no model
        remote = self.settings.model_runner == "saq"
        engine, assets = await self._load_engine(say, load=not remote)
        engine_config = engine.config
        runner = None
        if remote:
            from bot.jobs.runner import features_tag
            from bot.jobs.saq_runner import SaqRunner

            say("connecting to the job queue")
            tag = features_tag(engine)
            runner = self._runner = await SaqRunner.open(self.settings, media=self.media, features_tag=tag)
        service = ConversationService(
            engine=engine, catalog=self.catalog, store=ConversationStore(self.sql), sql=self.sql, media=self.media,
            assets=assets, config=self.config, limits=engine_config.limits,
            ffmpeg=self.settings.ffmpeg_binary, pool=self.pool, runner=runner,
        )  # fmt: skip
        await service.warm_up()
        settle_heap()
        # Model threads, the refresh's decoder and SQLite's threads all want the GIL; handing it over
        # every 1 ms instead of 5 ms lets the event loop (every chat) get it back sooner.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        return service

    async def worker_runner(self, progress: Progress | None = None) -> Any:
        """`musechat worker`'s in-process runner (bot/jobs/local.py): the models loaded and warmed up once."""
        from bot.jobs.local import InProcessRunner
        from bot.service.media import MediaRenderer
        from bot.service.reasons import REASONER_LOCAL, ReasonWriter

        self.check_weights()
        say = progress or (lambda _: None)
        engine, assets = await self._load_engine(say)
        batchers = {}
        batch_size = self.settings.worker_batch_size or (GPU_BATCH_SIZE if str(self.settings.device).startswith("cuda") else 1)
        if batch_size > 1:  # concurrent videos' frames in one forward pass (bot/jobs/batching.py)
            from bot.jobs.batching import BatchingImageEncoder, BatchingTextEncoder

            image = BatchingImageEncoder(
                engine.encoders.image, max_size=batch_size, max_wait_s=self.settings.worker_batch_wait_ms / 1000
            )  # fmt: skip
            engine._encoders = dataclasses.replace(engine.encoders, image=image)
            if hasattr(image.inner, "label_vectors"):  # CLIP's class prompts, once, before two batch threads share its tokenizer
                await asyncio.to_thread(image.inner.label_vectors)
            text = BatchingTextEncoder(
                engine.encoders.text, max_size=batch_size, max_wait_s=self.settings.worker_batch_wait_ms / 1000
            )  # fmt: skip
            engine.share_text_encoder(text)  # the jobs' query sentences meet in its batches
            batchers |= {"image embedding": image.batcher, "query encoding": text.batcher}
            self._closers += [image.close, text.close]
        renderer = MediaRenderer(
            media=self.media, assets=assets, pool=self.pool, limits=engine.config.limits, ffmpeg=self.settings.ffmpeg_binary,
            mix_original_sound=self.config.mix_original_sound,
        )  # fmt: skip
        reasons = ReasonWriter(config=self.config, engine=engine, assets=assets)
        self._closers.append(reasons.close)  # its process, in process mode
        if self.config.reasoner == REASONER_LOCAL:
            say("loading the reasoner")
            await asyncio.to_thread(reasons.get_reasoner)
        runner = InProcessRunner(self.pool, engine=engine, media=self.media, renderer=renderer, reasons=reasons)
        runner.batchers = batchers
        renderer.runner = runner
        settle_heap()
        return runner

    # --- catalog administration -----------------------------------------------------------------

    def refresh_queue(self) -> Any:
        """Where `musechat serve`'s scheduled refreshes go: the SAQ runner (a worker refreshes, on the
        catalog queue) when the service sends its model jobs to workers and the catalog is a server
        (MUSECHAT_QDRANT_URL) a worker can open too; else None: this process refreshes (an embedded
        catalog belongs to the one process that opened it: this one)."""
        if self._runner is None:
            return None
        if not self.settings.qdrant_url:
            log.info("catalog refreshes run in this process: the embedded catalog cannot be opened by a worker while it is open here")
            return None
        return self._runner

    def admin(self) -> CatalogAdmin:
        """The catalog admin over the same catalog, database, media store and model pool."""
        if self._admin is None:
            from engine.profiles import load_encoders, resolve_profile

            s = self.settings
            profile = resolve_profile(self.profile, s.backbone_overrides)
            ckpt = s.fusion_checkpoint
            fusion = load_fusion(ckpt, profile, device=s.device) if ckpt is not None else None
            from engine.music_towers import fusion_id

            fid = fusion_id(ckpt) if ckpt is not None else ""

            def encoders():  # the service's, when it is loaded; else the admin's own (a refresh with work to do)
                if self._service is not None and self._service.runner.local:  # (with workers, the front-end loaded none)
                    return self._service.engine.encoders
                if self._encoders is not None:
                    return self._encoders
                return load_encoders(profile, device=s.device)

            self._admin = CatalogAdmin(
                engine=self.sql, catalog=self.catalog, media_store=self.media, data_dir=s.data_dir, encoders=encoders,
                profile=profile, fusion=fusion, fusion_id=fid, ffmpeg=s.ffmpeg_binary, pool=self.pool,
                min_duration_s=s.catalog_min_track_s, check_content=s.catalog_check_content,
            )  # fmt: skip
        return self._admin

    # --- lifetime -------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the service (its background work), the pool, the catalog and the database, once."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._service is not None:
                await self._service.close()
            if self._runner is not None:
                await self._runner.close()
            await asyncio.to_thread(self.pool.shutdown)
            for close in self._closers:
                await asyncio.to_thread(close)
        finally:
            if self.catalog is not None:
                self.catalog.close()
            if self.sql.url.get_backend_name() == "postgresql":
                from storage.locks import close_lock_session

                await close_lock_session(self.sql)  # the connection that held this process's conversation locks
            await self.sql.dispose()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["App", "RandomWeightsError"]
