"""No Docker engine runs here, so the deployment files are checked against the code they drive.

Every ``RELOOP_`` variable must be a real setting (and parse), every command must exist in the CLI
with the options it passes, health checks must hit real routes, and the services must start in
the order that keeps the registry and the bucket ready before anything uses them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from reloop_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


# --- parsing ---------------------------------------------------------------------------------------
def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and "services" in data, "docker-compose.yml has no services"
    return data


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?msg}`` substitution, with ``env`` as the shell."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group("name"), m.group("op"), m.group("arg")
        if env.get(name):
            return env[name]
        if op == "-":
            return arg or ""
        if op == "?":
            raise AssertionError(f"compose requires ${name}: {arg}")
        return ""

    return _INTERPOLATION.sub(sub, value).replace("$$", "$")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(arg: str) -> list[str]:
    """A Dockerfile argument in exec form (JSON array) or shell form, as argv."""
    arg = arg.strip()
    if arg.startswith("["):
        return list(yaml.safe_load(arg))
    return shlex.split(arg)


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                key, sep, value = token.partition("=")
                assert sep, f"Dockerfile ENV {token!r}: use KEY=value"
                env[key] = value
    return env


def dockerfile_one(word: str) -> str:
    found = [rest for w, rest in dockerfile_instructions() if w == word]
    assert found, f"Dockerfile has no {word}"
    return found[-1]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def reloop_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from deploy/Dockerfile (their entry point is ``reloop``)."""
    out = {}
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if isinstance(build, dict) and str(build.get("dockerfile", "")).endswith("deploy/Dockerfile"):
            out[name] = svc
    return out


# --- the code the files drive ------------------------------------------------------------------------
def setting_field(var: str) -> str:
    assert var.startswith("RELOOP_"), var
    return var.removeprefix("RELOOP_").split("__", 1)[0].lower()


def is_group(command: Any) -> bool:
    """Typer vendors its own Click, so groups are recognised by behaviour, not by class."""
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def cli_root() -> Any:
    from reloop_service.cli import app

    command = typer.main.get_command(app)
    assert is_group(command)
    return command


def resolve_cli(argv: list[str], root: Any = None) -> Any:
    """Walk ``reloop <argv>`` through the Typer/Click tree; fail on unknown commands or options."""
    command = root if root is not None else cli_root()
    path = ["reloop"]
    args = list(argv)
    while is_group(command) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(command.context_class(command), name)
        assert sub is not None, f"`{' '.join([*path, name])}` is not a CLI command"
        command, path = sub, [*path, name]
    assert not is_group(command), f"`{' '.join(path)}` is a group, not a command"
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in args:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in known, f"`{' '.join(path)}` has no option {flag} (known: {sorted(known)})"
    return command


def app_routes(tmp_path: Path) -> set[str]:
    """GET paths the API answers with 200, probed through the real ASGI app (no server needed).

    Every documented path is a candidate; a health check path must also answer 200 without a
    model or database state, as a container's liveness probe would see it right after start.
    """
    import asyncio

    import httpx

    from reloop_service.serving.app import create_app

    app = create_app(Settings(data_dir=tmp_path))
    documented = {path for path, ops in app.openapi()["paths"].items() if "get" in ops}

    async def probe(paths: set[str]) -> set[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return {p for p in paths if "{" not in p and (await client.get(p)).status_code == 200}

    return asyncio.run(probe(documented))


_URL_PATH = re.compile(r"https?://[^/\s'\"]+(?P<path>/[A-Za-z0-9_\-/]*)")


def healthcheck_paths(test: list[str] | str) -> list[str]:
    text = " ".join(test) if isinstance(test, list) else test
    return [m.group("path") for m in _URL_PATH.finditer(text)]


# --- tests: Dockerfile -----------------------------------------------------------------------------
def test_dockerfile_base_user_torch_entrypoint() -> None:
    instructions = dockerfile_instructions()
    base = dockerfile_one("FROM").split()[0]
    assert re.fullmatch(r"python:3\.11[\w.\-]*-slim[\w.\-]*", base), f"not a slim Python 3.11 base: {base}"

    runs = " ".join(rest for w, rest in instructions if w == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs and "torch==" in runs, "CPU torch is not installed"
    torch_at = runs.index("torch==")
    package_at = runs.index("pip install .")
    assert torch_at < package_at, "CPU torch must be installed before the package, or pip pulls CUDA torch"

    user = dockerfile_one("USER").split(":")[0]
    assert user not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(rf"useradd [^&;]*\b{re.escape(user)}\b", runs), f"USER {user} is never created"
    # USER comes after every RUN that needs root, and before the entry point.
    words = [w for w, _ in instructions]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")

    assert exec_form(dockerfile_one("ENTRYPOINT")) == ["reloop"]
    resolve_cli(exec_form(dockerfile_one("CMD")))


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [exec_form(rest) for w, rest in dockerfile_instructions() if w == "COPY"]
    assert copies, "Dockerfile copies nothing"
    for argv in copies:
        sources = [a for a in argv[:-1] if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile COPY {src}: not in the repository"
            assert src not in ignored, f"Dockerfile COPY {src}: excluded by .dockerignore"
    # Links inside what is copied (reloop_service/migrations_pkg -> ../migrations) must point at
    # something copied too, or the installed package lacks e.g. its Alembic scripts.
    copied = [(ROOT / src).resolve() for argv in copies for src in argv[:-1] if not src.startswith("--")]
    for src in copied:
        links = (
            [src]
            if src.is_symlink()
            else [p for p in src.rglob("*") if p.is_symlink()]
            if src.is_dir()
            else []
        )
        for link in links:
            target = link.resolve()
            assert any(target == c or c in target.parents for c in copied), (
                f"{link.relative_to(ROOT)} links to {target}, which the Dockerfile does not copy"
            )
    for must in (".git", ".venv", "reloop-data"):
        assert must in ignored, f".dockerignore should exclude {must}"


def test_dockerfile_env_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("RELOOP_")}
    assert env, "the Dockerfile sets no RELOOP_ defaults"
    fields = set(Settings.model_fields)
    for var in env:
        assert setting_field(var) in fields, f"Dockerfile ENV {var} is not a setting"
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.api_host == env.get("RELOOP_API_HOST", settings.api_host)


def test_dockerfile_healthcheck_hits_real_route(tmp_path: Path) -> None:
    health = dockerfile_one("HEALTHCHECK")
    assert "CMD" in health
    paths = healthcheck_paths(health)
    assert paths == ["/healthz"], f"HEALTHCHECK should probe /healthz, got {paths}"
    routes = app_routes(tmp_path)
    for path in paths:
        assert path in routes, f"HEALTHCHECK probes {path}, which the API does not serve"


# --- tests: docker-compose.yml -------------------------------------------------------------------
def test_compose_has_the_services() -> None:
    services = load_compose()["services"]
    for name in ("postgres", "minio", "migrate", "api", "scheduler"):
        assert name in services, f"docker-compose.yml lacks the {name} service"
    assert services["api"]["deploy"]["replicas"] == 2
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    # The bucket is made at start, by a one-shot `mc mb` service.
    bucket_makers = [n for n, s in services.items() if "mc mb" in " ".join(map(str, s.get("command") or []))]
    assert bucket_makers, "no service creates the bucket"
    assert set(reloop_services(load_compose())) >= {"migrate", "api", "scheduler"}


def test_compose_env_are_real_settings_and_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    compose = load_compose()
    fields = set(Settings.model_fields)
    shell = {"RELOOP_ADMIN_TOKEN": "t" * 32}
    required = {
        "RELOOP_DATABASE_URL",
        "RELOOP_LOGS_URI",
        "RELOOP_ARTIFACTS_URI",
        "RELOOP_ARCHIVE_URI",
        "RELOOP_REPORTS_URI",
        "RELOOP_S3_ENDPOINT_URL",
        "RELOOP_S3_ACCESS_KEY_ID",
        "RELOOP_S3_SECRET_ACCESS_KEY",
        "RELOOP_ADMIN_TOKEN",
    }
    for name, svc in reloop_services(compose).items():
        env = compose_env(svc)
        assert required <= set(env), f"{name} lacks {sorted(required - set(env))}"
        for var in env:
            if var.startswith("RELOOP_"):
                assert setting_field(var) in fields, f"{name}: {var} is not a setting"
        with monkeypatch.context() as m:
            for var, value in env.items():
                m.setenv(var, interpolate(value, shell))
            settings = Settings()
        assert settings.resolved_database_url.startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in settings.resolved_database_url
        for uri in (
            settings.resolved_logs_uri,
            settings.resolved_artifacts_uri,
            settings.resolved_archive_uri,
            settings.resolved_reports_uri,
        ):
            assert uri.startswith("s3://"), f"{name}: {uri} is not on the bucket"
        assert settings.storage_options()["client_kwargs"]["endpoint_url"] == "http://minio:9000"
        assert settings.admin_token is not None
        assert settings.admin_token.get_secret_value() == shell["RELOOP_ADMIN_TOKEN"]


def test_compose_secrets_come_from_the_environment() -> None:
    """The admin token has no default: compose refuses to start without it."""
    env = compose_env(reloop_services(load_compose())["api"])
    with pytest.raises(AssertionError, match="RELOOP_ADMIN_TOKEN"):
        interpolate(env["RELOOP_ADMIN_TOKEN"], {})
    for var in ("RELOOP_S3_SECRET_ACCESS_KEY", "RELOOP_ADMIN_TOKEN"):
        assert env[var].startswith("${"), f"{var} is written into the file instead of read from env"


def test_compose_commands_exist_in_cli() -> None:
    compose = load_compose()
    expected = {"migrate": ["db", "upgrade"], "scheduler": ["scheduler"]}
    for name, svc in reloop_services(compose).items():
        argv = svc.get("command") or exec_form(dockerfile_one("CMD"))
        assert isinstance(argv, list), f"{name}: use the exec (list) form for command"
        assert "entrypoint" not in svc, f"{name} overrides the reloop entry point"
        resolve_cli([str(a) for a in argv])
        if name in expected:
            assert argv == expected[name], f"{name} runs {argv}"
    api = compose["services"]["api"]["command"]
    assert api[0] == "serve" and api[api.index("--host") + 1] == "0.0.0.0"


def test_cli_walker_rejects_unknown_commands_and_options() -> None:
    """The walker itself must be able to fail, or the checks above would prove nothing."""
    toy = typer.Typer()
    db = typer.Typer()
    toy.add_typer(db, name="db")

    @db.command("upgrade")
    def upgrade(revision: str = typer.Option("head", "--revision")) -> None:
        """Toy command."""

    @toy.command("serve")
    def serve(host: str = typer.Option("127.0.0.1", "--host")) -> None:
        """Toy command."""

    root = typer.main.get_command(toy)
    resolve_cli(["db", "upgrade", "--revision", "head"], root)
    resolve_cli(["serve", "--host", "0.0.0.0"], root)
    with pytest.raises(AssertionError, match="not a CLI command"):
        resolve_cli(["no-such-command"], root)
    with pytest.raises(AssertionError, match="is a group"):
        resolve_cli(["db"], root)
    with pytest.raises(AssertionError, match="no option"):
        resolve_cli(["db", "upgrade", "--no-such-flag"], root)


def test_compose_healthchecks_hit_real_routes(tmp_path: Path) -> None:
    compose = load_compose()
    routes = app_routes(tmp_path)
    probed = []
    for name, svc in reloop_services(compose).items():
        check = svc.get("healthcheck") or {}
        if check.get("disable"):
            continue
        for path in healthcheck_paths(check.get("test", [])):
            assert path in routes, f"{name} health check probes {path}, which the API does not serve"
            probed.append(name)
    assert "api" in probed, "the api service has no HTTP health check"


def test_compose_startup_order() -> None:
    services = load_compose()["services"]

    def deps(name: str) -> dict[str, str]:
        raw = services[name].get("depends_on") or {}
        assert isinstance(raw, dict), f"{name}: depends_on needs conditions (mapping form)"
        return {k: v["condition"] for k, v in raw.items()}

    for name in services:
        for dep, condition in deps(name).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{dep} has no health check"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"one-shot {dep} must not restart"

    assert deps("migrate").get("postgres") == "service_healthy"
    bucket = next(n for n, s in services.items() if "mc mb" in " ".join(map(str, s.get("command") or [])))
    assert deps(bucket).get("minio") == "service_healthy"
    for name in ("api", "scheduler"):
        assert deps(name).get("migrate") == "service_completed_successfully", (
            f"{name} may start pre-migration"
        )
        assert deps(name).get(bucket) == "service_completed_successfully", (
            f"{name} may start before the bucket"
        )

    # No cycles: a topological order exists.
    order: list[str] = []
    pending = set(services)
    while pending:
        ready = {n for n in pending if set(deps(n)) <= set(order)}
        assert ready, f"depends_on has a cycle among {sorted(pending)}"
        order.extend(sorted(ready))
        pending -= ready
    assert order.index("postgres") < order.index("migrate") < order.index("api")


# --- tests: the guides -----------------------------------------------------------------------------
def guide_commands(path: Path) -> list[list[str]]:
    """``reloop …`` invocations in the bash blocks of a guide (also via ``docker compose run``)."""
    commands: list[list[str]] = []
    in_block = False
    text = path.read_text().replace("\\\n", " ")  # join continuation lines
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block and line.strip() in ("```bash", "```sh")
            continue
        if not in_block:
            continue
        tokens = shlex.split(line, comments=True)
        while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
            tokens = tokens[1:]  # leading VAR=value assignments
        if tokens[:1] == ["reloop"]:
            commands.append(tokens[1:])
        elif tokens[:4] == ["docker", "compose", "run", "--rm"] and len(tokens) > 5:
            commands.append(tokens[5:])
    return commands


@pytest.mark.parametrize("guide", ["deploy/README.md", "docs/scaling-out.md", "README.md"])
def test_guide_commands_exist_in_cli(guide: str) -> None:
    commands = guide_commands(ROOT / guide)
    assert commands, f"{guide} shows no reloop command"
    for argv in commands:
        resolve_cli(argv)


def test_guide_settings_are_real() -> None:
    fields = set(Settings.model_fields)
    for guide in ("deploy/README.md", "docs/scaling-out.md", "README.md"):
        for var in set(re.findall(r"\bRELOOP_[A-Z0-9_]+", (ROOT / guide).read_text())):
            assert setting_field(var) in fields, f"{guide}: {var} is not a setting"
