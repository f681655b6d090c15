"""Typed settings, read once from the environment (prefix MUSECHAT_) and an optional .env file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.service.errors import SettingsError  # noqa: F401 - the error of a setting the bot cannot run with
from engine.screening import MIN_TRACK_S

MB = 2**20  # bytes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSECHAT_", env_file=".env", extra="ignore")

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="SQLite file, embedded Qdrant shards, media store")
    music_dir: Path = Field(
        Path.home() / ".cache" / "musechat" / "music",
        description="demo music fetched by scripts/fetch_music.sh",
    )

    # --- storage ---------------------------------------------------------------------------------
    database_url: str | None = Field(
        None, description="SQLAlchemy URL, e.g. postgresql://user@host/db; default: SQLite in data_dir"
    )
    qdrant_url: str | None = Field(None, description="Qdrant server/cluster URL; default: embedded catalog in data_dir")
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server")
    media_max_age_days: float = Field(30.0, description="media store: remove files unused this long")
    media_max_total_mb: float = Field(5 * 1024.0, description="media store: total size cap, MiB")

    # --- models --------------------------------------------------------------------------------
    profile: str = Field("lite", description="model profile: paper | lite | tiny (DESIGN.md)")
    image_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    text_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    music_backbone: str | None = Field(None, description="hub id or local dir; overrides the profile's")
    device: str = Field("cpu", description="torch device for model work")
    query_fps: float = Field(1.0, description="frames per second sampled for a chat query (training uses 5)")
    fusion_checkpoint: Path | None = Field(
        None, description="trained MVT-Fusion checkpoint dir; unset: the zero-shot recommender answers"
    )
    zeroshot_semantic_weight: float = Field(1.0, description="zero-shot: weight of video labels + words vs track text")
    zeroshot_pace_weight: float = Field(1.0, description="zero-shot: weight of video pace vs track tempo/loudness")
    zeroshot_steering_weight: float = Field(12.0, description="zero-shot: weight of feedback steering")
    steering_drift_penalty: float = Field(0.25, description="steering: penalty for changing tags nobody asked about")
    fusion_steering_weight: float = Field(1.0, description="steering beside a fusion checkpoint (0: the model alone)")
    candidate_pool: int = Field(200, description="catalog candidates re-ranked per turn")
    model_workers: int = Field(2, description="threads doing model work (video decoding, queries) per bot process")
    preview_mix_original: bool = Field(False, description="previews keep the video's own sound under the track")
    reasoner: str = Field("local", description="who writes the best track's reason: local (the profile's LLM, grounded) | http (a server) | off (tag summary)")
    reasoner_timeout_s: float = Field(3.0, description="after this the reply falls back to the labelled tag summary")
    reasoner_grounded: bool = Field(True, description="facts-only prompt; each sentence is checked against the facts before it is shown")
    reasoner_checkpoint: Path | None = Field(None, description="trained LoRA + music projection (musechat reasoner train)")
    reasoner_int8: bool = Field(True, description="local reasoner on a CPU with native bfloat16: int8 weights for decoding (~3x faster)")
    reasoner_process: bool = Field(True, description="local reasoner in a child process of its own, the only thread there running torch (~2x faster reasons next to the encoders)")
    reasoner_max_new_tokens: int = Field(48, description="longest generated reason, tokens")
    reasoner_url: str | None = Field(None, description="reasoner=http: OpenAI-compatible server base URL (Ollama, vLLM)")
    reasoner_model: str | None = Field(None, description="reasoner=http: the server's model name")
    reasoner_api_key: SecretStr | None = Field(None, description="reasoner=http: bearer API key (optional, never logged)")

    # --- platforms (DESIGN.md, "The adapter contract"; README "Platform set-up") -------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token; set: `serve` runs the Discord adapter")
    discord_message_content: bool = Field(False, description="Discord: the privileged message-content intent is on in the portal")
    discord_guild_ids: str = Field("", description="Discord: guild ids (comma-separated) the bot answers in; empty: all")
    discord_channel_ids: str = Field("", description="Discord: channel ids (comma-separated) the bot answers in (threads: their parent); empty: all")
    discord_admin_role_ids: str = Field("", description="Discord: role ids (comma-separated) allowed /music-admin besides Manage Server")
    cooldown_turns: float = Field(6.0, description="per-user cooldown: turns a user may ask for in a burst (0: no cooldown)")
    cooldown_refill_per_min: float = Field(6.0, description="per-user cooldown: turns given back per minute")
    slack_bot_token: SecretStr | None = Field(None, description="Slack bot token (xoxb-...); set: `serve` runs the Slack adapter")
    slack_app_token: SecretStr | None = Field(None, description="Slack app-level token (xapp-...) for Socket Mode")
    slack_signing_secret: SecretStr | None = Field(None, description="Slack signing secret (HTTP mode)")
    slack_mode: str = Field("socket", description="Slack: socket (default, no public URL) | http")
    slack_http_port: int = Field(3000, description="Slack HTTP mode: port of /slack/events")
    slack_http_host: str = Field("0.0.0.0", description="Slack HTTP mode: address to listen on")
    slack_admin_user_ids: str = Field("", description="Slack user ids (comma-separated) allowed to use /music-admin")
    health_host: str = Field("127.0.0.1", description="`serve`: address of /healthz and /readyz")
    health_port: int = Field(8081, description="`serve`: port of /healthz and /readyz (0: none)")
    redis_url: str | None = Field(None, description="Redis URL: Slack event de-duplication, the job queue")
    # --- the model runner and its job queue (bot/jobs/; README "Scaling out") ---------------
    model_runner: str = Field("local", description="who runs model jobs: local (this process's pool) | saq (workers behind MUSECHAT_REDIS_URL)")
    queue_interactive: str = Field("musechat-interactive", description="SAQ queue of users' model jobs")
    queue_catalog: str = Field("musechat-catalog", description="SAQ queue of long catalog jobs (heartbeats)")
    queue_limit: int = Field(200, description="waiting jobs above which a request is refused with a chat message")
    job_timeout_s: int = Field(120, description="interactive job: time limit of one attempt, seconds")
    job_retries: int = Field(3, description="interactive job: attempts in all (a worker lost mid-job is retried)")
    job_retry_delay_s: float = Field(0.5, description="first retry delay, seconds (doubled each retry, with jitter)")
    job_heartbeat_s: int = Field(6, description="interactive job: a worker silent this long is presumed dead, seconds")
    catalog_job_timeout_s: int = Field(3600, description="catalog job: time limit of one attempt, seconds")
    catalog_job_heartbeat_s: int = Field(60, description="catalog job: a worker silent this long is presumed dead, seconds")
    job_ttl_s: int = Field(3600, description="how long a finished job's result is kept in Redis, seconds")
    queue_sweep_s: float = Field(2.0, description="worker: how often stuck or orphaned jobs are swept, seconds")
    worker_concurrency: int = Field(4, description="worker: interactive jobs at a time (model threads: model_workers)")
    worker_batch_size: int | None = Field(
        None, ge=1,
        description="worker: concurrent requests of one kind run in one forward pass, at most (1: no batching; "
        "unset: 8 on a GPU, 1 on the CPU, where one pass of several videos measured no faster than one by one)",
    )  # fmt: skip
    worker_batch_wait_ms: float = Field(5.0, ge=0, description="worker: ms the first request of a batch waits for others")
    worker_drain_s: float = Field(30.0, description="worker: SIGTERM lets jobs in flight finish this long, seconds")
    allow_random_weights: bool = Field(False, description="let `serve`/`chat` run the tiny profile (random weights; tests only)")
    log_json: bool = Field(False, description="`serve`: one JSON object per log line")

    # --- media limits --------------------------------------------------------------------------
    ffmpeg_binary: str | None = Field(None, description="ffmpeg executable; default: the one imageio-ffmpeg ships")
    max_video_seconds: float = Field(15 * 60.0, description="longest accepted upload, seconds")
    max_upload_bytes: int = Field(200 * MB, description="largest accepted upload, bytes")
    ffmpeg_timeout_s: float = Field(120.0, description="time limit of one ffmpeg call, seconds")
    catalog_min_track_s: float = Field(MIN_TRACK_S, ge=0.0, description="catalog: shorter files are skipped as too short, seconds (one paper segment)")
    catalog_check_content: bool = Field(True, description="catalog: skip silence and constant tones (engine/screening.py)")

    @property
    def sql_url(self) -> str:
        from storage.db import default_sqlite_url

        return self.database_url or default_sqlite_url(self.data_dir)

    @property
    def slack_admins(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.slack_admin_user_ids.split(",") if x.strip())

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    def engine_config(self):
        """The engine's configuration from these settings (engine/ never reads settings itself)."""
        from engine.engine import EngineConfig
        from engine.media import MediaLimits
        from engine.zeroshot import ZeroShotWeights

        return EngineConfig(
            profile=self.profile,
            overrides=self.backbone_overrides,
            device=self.device,
            query_fps=self.query_fps,
            limits=MediaLimits(
                max_seconds=self.max_video_seconds, max_bytes=self.max_upload_bytes, timeout_s=self.ffmpeg_timeout_s
            ),
            ffmpeg=self.ffmpeg_binary,
            fusion_checkpoint=self.fusion_checkpoint,
            zero_shot=ZeroShotWeights(
                semantic=self.zeroshot_semantic_weight,
                pace=self.zeroshot_pace_weight,
                steering=self.zeroshot_steering_weight,
                drift_penalty=self.steering_drift_penalty,
            ),
            fusion_steering_weight=self.fusion_steering_weight,
            candidate_pool=self.candidate_pool,
        )

    def service_config(self):
        """The conversation service's configuration from these settings."""
        from bot.service.conversation import ServiceConfig

        return ServiceConfig(
            workers=self.model_workers,
            candidate_pool=self.candidate_pool,
            mix_original_sound=self.preview_mix_original,
            max_upload_bytes=self.max_upload_bytes,
            reasoner=self.reasoner,
            reasoner_timeout_s=self.reasoner_timeout_s,
            reasoner_grounded=self.reasoner_grounded,
            reasoner_checkpoint=self.reasoner_checkpoint,
            reasoner_int8=self.reasoner_int8,
            reasoner_process=self.reasoner_process,
            reasoner_max_new_tokens=self.reasoner_max_new_tokens,
            reasoner_url=self.reasoner_url,
            reasoner_model=self.reasoner_model,
            reasoner_api_key=self.reasoner_api_key.get_secret_value() if self.reasoner_api_key else None,
        )

    def interactive_policy(self):
        """How interactive jobs run (bot/jobs/saq_runner.py `JobPolicy`)."""
        from bot.jobs.saq_runner import JobPolicy

        return JobPolicy(self.job_timeout_s, self.job_retries, self.job_retry_delay_s, self.job_heartbeat_s, self.job_ttl_s)

    def catalog_policy(self):
        """How catalog jobs run: long, with heartbeats."""
        from bot.jobs.saq_runner import JobPolicy

        return JobPolicy(self.catalog_job_timeout_s, self.job_retries, self.job_retry_delay_s, self.catalog_job_heartbeat_s, self.job_ttl_s)

    @property
    def backbone_overrides(self) -> dict[str, str]:
        pairs = {"image": self.image_backbone, "text": self.text_backbone, "music": self.music_backbone}
        return {k: v for k, v in pairs.items() if v}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (read from the environment on first use)."""
    return Settings()
