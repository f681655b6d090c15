"""compose.yaml and the Dockerfile: what the stack promises (README "Scaling out").

compose.yaml is interpolated the way compose does it (from compose.env.example, filled in) and
validated against the Compose Specification's JSON schema (vendored in tests/fixtures/compose-spec,
nothing fetched). Then the promises that matter: start order through healthchecks, PostgreSQL 18's
volume, Qdrant's readiness without curl (its check is run against a local HTTP server), Redis that
never evicts (its flags are run on a real redis-server), GPU reservations, the drain time, secrets
from the env file, one image. Building and running the image is scripts/container_check.sh.
"""

from __future__ import annotations

import copy
import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bot.adapters.host import DRAIN_GRACE_S

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / "compose.env.example"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.schema.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

APP_SERVICES = ("migrate", "bot-discord", "bot-slack", "worker", "worker-gpu")
BOTS = ("bot-discord", "bot-slack")
WORKERS = ("worker", "worker-gpu")
STORES = ("postgres", "redis", "qdrant")
# filled into the example env file's empty required values
SAMPLE_SECRETS = {"POSTGRES_PASSWORD": "pw-3f9a1c", "QDRANT_API_KEY": "qk-77b2e0"}


# --- compose's interpolation (compose-spec "Interpolation"), enough for this file -------------------

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Substitute ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m["escaped"]:
            return "$"
        name = m["braced"] or m["named"]
        op, arg = m["op"], m["arg"] or ""
        have = name in env
        non_empty = bool(env.get(name))
        if op in (":-", "-"):
            return env[name] if (non_empty if op == ":-" else have) else arg
        if op in (":?", "?"):
            if not (non_empty if op == ":?" else have):
                raise InterpolationError(f"{name}: {arg}")
            return env[name]
        if op in (":+", "+"):
            return arg if (non_empty if op == ":+" else have) else ""
        return env.get(name, "")

    return _VAR.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip()
    return env


def example_env() -> dict[str, str]:
    env = read_env_file(ENV_EXAMPLE)
    for key, val in SAMPLE_SECRETS.items():
        assert key in env, f"{key} missing from compose.env.example"
        if not env[key]:
            env[key] = val
    return env


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as compose sees it: YAML anchors and merge keys resolved, then interpolated."""
    return interpolate(raw_compose(), example_env() if env is None else env)


def schema_errors(config: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config))


def duration_s(value: str) -> float:
    """A compose duration ("1m30s", "30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return compose_config()


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    return config["services"]


# --- the schema ---------------------------------------------------------------------------------

def test_vendored_schema_is_the_recorded_one():
    import hashlib

    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    assert json.loads(SCHEMA.read_text())["title"] == "Compose Specification"


def test_compose_file_is_valid_against_the_compose_specification(config):
    assert schema_errors(config) == []


def _drop_capabilities(c):
    del c["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]


def _bad_condition(c):
    c["services"]["bot-slack"]["depends_on"]["migrate"]["condition"] = "service_ready"


def _misspelt_key(c):
    c["services"]["worker"]["stop_grace_periode"] = c["services"]["worker"].pop("stop_grace_period")


def _healthcheck_misspelt(c):
    c["services"]["redis"]["healthcheck"]["start_periode"] = "10s"


BROKEN = [
    ("GPU reservation without capabilities", _drop_capabilities),
    ("unknown depends_on condition", _bad_condition),
    ("misspelt service key", _misspelt_key),
    ("misspelt healthcheck key", _healthcheck_misspelt),
]


@pytest.mark.parametrize("label,breaks", BROKEN, ids=[b[0] for b in BROKEN])
def test_the_schema_check_catches_a_broken_file(config, label, breaks):
    broken = copy.deepcopy(config)
    breaks(broken)
    assert schema_errors(broken), f"the schema accepted: {label}"


def test_required_secrets_must_be_set():
    env = example_env()
    for key in SAMPLE_SECRETS:
        missing = {k: v for k, v in env.items() if k != key}
        with pytest.raises(InterpolationError, match=key):
            compose_config(missing)
        with pytest.raises(InterpolationError, match=key):
            compose_config({**env, key: ""})


def test_every_required_variable_is_in_the_env_example():
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE.read_text()))
    assert required == set(SAMPLE_SECRETS)
    assert required <= set(read_env_file(ENV_EXAMPLE))


# --- start order ----------------------------------------------------------------------------------

def test_services_are_the_stack_of_the_issue(services):
    assert set(services) == {*APP_SERVICES, *STORES}


def test_dependencies_wait_for_health_and_for_the_migration(services):
    for name in (*BOTS, *WORKERS):
        deps = services[name]["depends_on"]
        assert deps == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "qdrant": {"condition": "service_healthy"},
        }, name
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    # a service_healthy dependency must have a healthcheck, or compose waits forever
    for name, svc in services.items():
        for dep, how in svc.get("depends_on", {}).items():
            if how["condition"] == "service_healthy":
                hc = services[dep].get("healthcheck", {})
                assert hc.get("test") and not hc.get("disable"), f"{name} waits for {dep}'s health, which has no check"
            assert "profiles" not in services[dep], f"{name} depends on {dep}, which a profile can turn off"


def test_migrate_runs_once_and_has_no_serve_healthcheck(services):
    m = services["migrate"]
    assert m["command"] == ["musechat", "db", "upgrade"]
    assert m["restart"] == "no"
    assert m["healthcheck"] == {"disable": True}
    assert "profiles" not in m


# --- the stores -------------------------------------------------------------------------------------

def test_postgres_18_keeps_its_data_at_var_lib_postgresql(services, config):
    pg = services["postgres"]
    assert pg["image"] == "postgres:18"
    m = mounts(pg)
    assert m == {"/var/lib/postgresql": "pg"}, "PostgreSQL 18 refuses a volume at /var/lib/postgresql/data"
    assert "pg" in config["volumes"]
    assert pg["healthcheck"]["test"] == ["CMD-SHELL", "pg_isready -U musechat -d musechat"]
    assert pg["environment"]["POSTGRES_PASSWORD"] == SAMPLE_SECRETS["POSTGRES_PASSWORD"]
    assert pg["environment"]["POSTGRES_USER"] == "musechat" and pg["environment"]["POSTGRES_DB"] == "musechat"


def test_qdrant_official_image_storage_and_readiness_without_curl(services):
    q = services["qdrant"]
    assert q["image"].startswith("qdrant/qdrant:v")
    assert mounts(q)["/qdrant/storage"] == "qdrant"
    test = q["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"]
    script = test[3]
    assert "/dev/tcp/127.0.0.1/6333" in script and "GET /readyz" in script
    assert not re.search(r"\b(curl|wget)\b", script)
    assert q["environment"]["QDRANT__SERVICE__API_KEY"] == SAMPLE_SECRETS["QDRANT_API_KEY"]


class _Readyz(http.server.BaseHTTPRequestHandler):
    """Answers /readyz like Qdrant (src/actix/api/service_api.rs): 200 or 503 with a sentence."""

    ready = True
    paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).paths.append(self.path)
        ok = self.path == "/readyz" and type(self).ready
        body = b"all shards are ready" if ok else b"some shards are not ready"
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_qdrant_check(script: str, port: int) -> int:
    local = script.replace("/dev/tcp/127.0.0.1/6333", f"/dev/tcp/127.0.0.1/{port}")
    assert local != script
    return subprocess.run(["bash", "-c", local], capture_output=True, timeout=10).returncode


def test_qdrant_healthcheck_reads_readyz_for_real(services):
    """The exact check, pointed at a local server that answers like Qdrant's /readyz."""
    script = services["qdrant"]["healthcheck"]["test"][3]
    handler = type("Readyz", (_Readyz,), {"paths": [], "ready": True})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert _run_qdrant_check(script, port) == 0
        handler.ready = False
        assert _run_qdrant_check(script, port) != 0
        assert handler.paths == ["/readyz", "/readyz"]
    finally:
        server.shutdown()
        server.server_close()
    assert _run_qdrant_check(script, _free_port()) != 0  # nothing listening


def test_redis_keeps_every_job(services, tmp_path):
    """AOF on, noeviction: the service's own flags, run on a real redis-server."""
    r = services["redis"]
    cmd = r["command"]
    assert cmd[0] == "redis-server"
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert mounts(r)["/data"] == "redis"
    assert r["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/services.sh installs it)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, *cmd[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "redis-server refused the compose flags"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        got = {k: client.config_get(k)[k] for k in ("appendonly", "maxmemory-policy", "appendfsync", "maxmemory")}
        assert got == {"appendonly": "yes", "maxmemory-policy": "noeviction", "appendfsync": "everysec", "maxmemory": str(512 * 2**20)}
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- workers and bots -------------------------------------------------------------------------------

def test_gpu_worker_reserves_a_gpu_in_the_gpu_profile(services):
    gpu, cpu = services["worker-gpu"], services["worker"]
    assert gpu["profiles"] == ["gpu"]
    assert cpu["profiles"] == ["cpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert gpu["environment"]["MUSECHAT_DEVICE"] == "cuda"
    assert cpu["environment"]["MUSECHAT_DEVICE"] == "cpu"
    assert "deploy" not in cpu
    assert gpu["command"] == cpu["command"] == ["musechat", "worker"]
    for w in (gpu, cpu):
        assert w["healthcheck"]["test"] == ["CMD", "musechat", "worker", "--check"]
    # the override keeps every shared setting
    own = ("MUSECHAT_DEVICE", "MUSECHAT_WORKER_DRAIN_S")
    shared = {k: v for k, v in cpu["environment"].items() if k not in own}
    assert {k: v for k, v in gpu["environment"].items() if k not in own} == shared
    assert services["bot-slack"]["environment"] == shared
    assert shared["MUSECHAT_MODEL_RUNNER"] == "saq"


def test_gpu_id_comes_from_the_env_file(services):
    cfg = compose_config({**example_env(), "MUSECHAT_GPU_ID": "3"})
    assert cfg["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"]


def test_bots_serve_their_platform_and_report_health(services):
    for name, platform in (("bot-discord", "discord"), ("bot-slack", "slack")):
        bot = services[name]
        assert bot["command"] == ["musechat", "serve", "--platform", platform]
        assert bot["profiles"] == [platform]
        test = bot["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"] and "http://127.0.0.1:8081/healthz" in test[-1]
        assert not any(re.search(r"\b(curl|wget)\b", part) for part in test)
        assert "ports" not in bot


def test_stop_grace_period_outlasts_the_drain(services):
    """compose kills a container stop_grace_period after SIGTERM: the drain must end before."""
    for name in BOTS:
        grace = duration_s(services[name]["stop_grace_period"])
        assert grace == 30.0 and grace > DRAIN_GRACE_S == 20.0, name  # serve's --grace default
    for name in WORKERS:
        svc = services[name]
        drain = float(svc["environment"]["MUSECHAT_WORKER_DRAIN_S"])
        assert duration_s(svc["stop_grace_period"]) == 40.0 > drain == 30.0, name


def test_app_services_share_one_image_init_and_the_media_volume(services, config):
    images = {(services[n]["image"], json.dumps(services[n]["build"], sort_keys=True)) for n in APP_SERVICES}
    assert images == {("musechat:latest", json.dumps({"context": ".", "args": {"TORCH_VARIANT": "cpu"}}, sort_keys=True))}
    for name in APP_SERVICES:
        svc = services[name]
        assert svc["init"] is True, name
        data_dir = svc["environment"]["MUSECHAT_DATA_DIR"]
        assert mounts(svc)[data_dir] == "media", name
        assert mounts(svc)["/music"] == "./music", name
        assert svc["volumes"][1].endswith(":ro"), name
    assert "media" in config["volumes"]
    for name in (*BOTS, *WORKERS):
        assert services[name]["restart"] == "unless-stopped"
    env = services["worker"]["environment"]
    assert env["MUSECHAT_DATABASE_URL"] == f"postgresql://musechat:{SAMPLE_SECRETS['POSTGRES_PASSWORD']}@postgres:5432/musechat"
    assert env["MUSECHAT_REDIS_URL"] == "redis://redis:6379/0"
    assert env["MUSECHAT_QDRANT_URL"] == "http://qdrant:6333"


# --- secrets ------------------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY")


def test_secrets_come_from_the_env_file_only():
    raw = raw_compose()
    for name in APP_SERVICES:
        assert raw["services"][name]["env_file"] == ".env", name
    # every secret-looking value in compose.yaml is a ${VAR:?...} reference, never a literal
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if SECRET_NAME.search(str(k)) and isinstance(v, str):
                    assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", v), f"{path}/{k} holds a literal: {v!r}"
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")

    walk(raw, "")
    text = COMPOSE.read_text()
    for platform_secret in ("MUSECHAT_DISCORD_TOKEN", "MUSECHAT_SLACK_BOT_TOKEN", "MUSECHAT_SLACK_APP_TOKEN"):
        assert platform_secret not in text  # the bots read them from env_file
        assert platform_secret in ENV_EXAMPLE.read_text()
    # an empty token would count as "configured": the example leaves them commented out
    assert not {k for k in read_env_file(ENV_EXAMPLE) if "TOKEN" in k}


def test_the_env_file_stays_out_of_git_and_of_the_image():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode
    assert ignored == 0, ".env is not git-ignored"
    docker_ignore = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in docker_ignore and "*.env" in docker_ignore


# --- the Dockerfile -----------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    lines, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def args_index(ins: list[tuple[str, str]], name: str) -> int:
    return next(i for i, (k, a) in enumerate(ins) if k == "ARG" and a.split("=")[0] == name)


def test_dockerfile_build_arguments_and_runtime_settings():
    ins = _dockerfile_instructions()
    args = dict(a.split("=", 1) if "=" in a else (a, None) for k, a in ins if k == "ARG")
    assert args["BASE"] == "python:3.11-slim"
    assert args["PIP_CERT"] == '""' and args["PIP_FIND_LINKS"] == '""'
    assert args["TORCH_VARIANT"] == "cpu"
    assert ins[args_index(ins, "BASE") + 1] == ("FROM", "${BASE} AS python")
    # the dependency list is cut out of pyproject.toml in its own stage: only a change to the list
    # re-installs the dependencies (not the README, not pyproject's other tables)
    froms = [a for k, a in ins if k == "FROM"]
    assert froms == ["${BASE} AS python", "python AS requirements", "python"]
    copies = [a for k, a in ins if k == "COPY"]
    assert copies.index("--from=requirements /tmp/requirements.txt /tmp/requirements.txt") < copies.index("pyproject.toml README.md ./")
    env = " ".join(a for k, a in ins if k == "ENV")
    for setting in ("OMP_WAIT_POLICY=PASSIVE", "MUSECHAT_HEALTH_HOST=0.0.0.0", "MUSECHAT_HEALTH_PORT=8081", "MUSECHAT_DATA_DIR=/data"):
        assert setting in env
    assert "PIP_CERT" not in env and "PIP_FIND_LINKS" not in env  # build-only, never baked in
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [a for k, a in ins if k == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and '"python"' in health[0] and "curl" not in health[0]
    assert [a for k, a in ins if k == "CMD"][-1] == '["musechat", "serve"]'



def test_dockerfile_pins_what_the_project_pins():
    text = DOCKERFILE.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([^"]+)"', pyproject)[1]
    assert f"ARG TORCH_VERSION={torch_pin}" in text
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    nodeps = re.search(r"NODEPS_PACKAGES=\(([^)]*)\)", bootstrap)[1].split()
    line = next(ln for ln in text.splitlines() if "pip install --no-deps musicnn" in ln)
    assert shlex.split(line.split("pip install --no-deps", 1)[1].rstrip("\\ ")) == nodeps
    # ffmpeg is imageio-ffmpeg's static binary, checked while building
    assert "imageio_ffmpeg.get_ffmpeg_exe()" in text

