"""Consistency checks of the deployment files against the CLI, the configuration loader and each other.

Nothing here starts Docker or systemd: the files are parsed and every
``migrator`` command, option, storage root, port and secret in them is
compared with the code and the example configuration.
"""

from __future__ import annotations

import configparser
import importlib
import os
import pkgutil
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

import migrator.cli
from migrator.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
EXAMPLE_CONFIG = DEPLOY / "migrator.toml.example"
EXAMPLE_ENV = DEPLOY / "migrator.env.example"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
VM_ENV_FILES = sorted((DEPLOY / "env").glob("vm*.env"))
CONFIG_PATH = "/etc/migrator/migrator.toml"
MIGRATOR_IMAGE = "pacs-migrator:local"
PLACEHOLDER = "change-me"
FLOWER_PORT = "5555"
#: Tokens that end one shell command inside a line.
COMMAND_SEPARATORS = {";", "&&", "||", "|", "\\", "#"}


# --- helpers -----------------------------------------------------------------


def cli_root() -> Any:
    """Build the Click group of the ``migrator`` CLI with every subcommand module registered.

    Typer 0.29 builds on a Click copy of its own, so groups are recognized by
    their ``commands`` mapping rather than by ``click.Group``.
    """
    for module in pkgutil.iter_modules(migrator.cli.__path__):
        importlib.import_module(f"migrator.cli.{module.name}")
    group = typer.main.get_command(migrator.cli.app)
    assert is_group(group)
    return group


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def migrator_services() -> dict[str, dict]:
    """Return the Compose services whose entry point is the image's ``migrator``."""
    return {name: service for name, service in compose()["services"].items()
            if service.get("image") == MIGRATOR_IMAGE and "entrypoint" not in service}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, separator, value = line.partition("=")
        assert separator, f"{path.name}: line without '=': {line!r}"
        values[key.strip()] = value.strip()
    return values


def load_example(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Load the example configuration with every password variable set to a placeholder."""
    for name in read_env_file(EXAMPLE_ENV):
        monkeypatch.setenv(name, PLACEHOLDER)
    return load_settings(EXAMPLE_CONFIG)


def unit_exec_start(path: Path) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the case of systemd's keys
    parser.read(path, encoding="utf-8")
    return shlex.split(parser["Service"]["ExecStart"])


def code_snippets(text: str) -> list[str]:
    """Return the lines of fenced code blocks and the inline code spans of a text."""
    snippets = []
    in_block = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            snippets.append(line)
        else:
            snippets.extend(re.findall(r"`([^`\n]+)`", line))
    return snippets


def migrator_invocations(tokens: list[str]) -> list[list[str]]:
    """Return the arguments after each ``migrator`` program token, up to the end of its command."""
    found = []
    for index, token in enumerate(tokens):
        if token != "migrator" and not token.endswith("/bin/migrator"):
            continue
        arguments = []
        for argument in tokens[index + 1:]:
            if argument in COMMAND_SEPARATORS:
                break
            arguments.append(argument)
        if arguments:
            found.append(arguments)
    return found


def all_invocations() -> list[tuple[str, list[str]]]:
    """Collect every ``migrator`` command line of the Compose file, the units and DEPLOY.md."""
    invocations: list[tuple[str, list[str]]] = []
    for name, service in migrator_services().items():
        invocations.append((f"docker-compose.yml service {name}", list(service["command"])))
    for path in UNITS:
        for arguments in migrator_invocations(unit_exec_start(path)):
            invocations.append((path.name, arguments))
    for path in (COMPOSE_FILE, DEPLOY / "DEPLOY.md", *UNITS):
        for snippet in code_snippets(path.read_text(encoding="utf-8")):
            for arguments in migrator_invocations(snippet.split()):
                invocations.append((path.name, arguments))
    return invocations


def resolve_command(group: Any, arguments: list[str]) -> tuple[Any, list[str], str]:
    """Follow the subcommand names at the start of ``arguments``.

    Returns the command, the remaining arguments and the subcommand path.
    """
    command = group
    path = []
    rest = list(arguments)
    while is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        subcommand = command.commands.get(name)
        assert subcommand is not None, (
            f"'migrator {' '.join(path + [name])}' is not a subcommand; "
            f"expected one of {sorted(command.commands)}")
        command = subcommand
        path.append(name)
    return command, rest, " ".join(path)


def celery_flower_commands() -> list[tuple[str, list[str]]]:
    """Return the Celery command lines that start Flower, from Compose and the Flower unit."""
    flower_service = compose()["services"]["flower"]
    found = [("docker-compose.yml", shlex.split(" ".join(flower_service["command"])))]
    found.append(("migrator-flower.service",
                  shlex.split(unit_exec_start(DEPLOY / "systemd" / "migrator-flower.service")[-1])))
    commands = []
    for source, tokens in found:
        tokens = [token.rstrip(";") for token in tokens]
        starts = [i for i, token in enumerate(tokens) if token == "celery" or token.endswith("/bin/celery")]
        assert starts, f"{source}: no celery command"
        commands.append((source, tokens[starts[0]:]))
    return commands


# --- commands and options ----------------------------------------------------


def test_deploy_files_exist() -> None:
    for path in (REPO / "Dockerfile", COMPOSE_FILE, EXAMPLE_CONFIG, EXAMPLE_ENV, DEPLOY / "DEPLOY.md"):
        assert path.is_file(), f"{path} is missing"
    assert {path.name for path in UNITS} == {
        "migrator-worker@.service", "migrator-dispatcher.service", "migrator-flower.service"}
    assert [path.name for path in VM_ENV_FILES] == ["vm1.env", "vm2.env", "vm3.env", "vm4.env"]


def test_invocations_found() -> None:
    commands = {" ".join(arguments[:1]) for _, arguments in all_invocations()}
    # The Compose services and units run these, and DEPLOY.md adds config check.
    assert {"plan", "start", "worker", "config"} <= commands


def test_migrator_subcommands_and_options_exist() -> None:
    group = cli_root()
    for source, arguments in all_invocations():
        command, rest, path = resolve_command(group, arguments)
        assert not is_group(command), f"{source}: 'migrator {path}' needs a subcommand"
        known = {option for parameter in command.params for option in parameter.opts}
        for argument in rest:
            if not argument.startswith("-"):
                continue
            option = argument.split("=", 1)[0]
            assert option in known, (
                f"{source}: 'migrator {path}' has no option {option}; it has {sorted(known)}")


def test_services_pass_config_path() -> None:
    for name, service in migrator_services().items():
        command = service["command"]
        assert command[command.index("--config") + 1] == CONFIG_PATH, name
        mounted = [volume for volume in service["volumes"] if volume.split(":")[1] == CONFIG_PATH]
        assert mounted, f"service {name} does not mount {CONFIG_PATH}"


def test_worker_units_pass_roots() -> None:
    worker = migrator_invocations(unit_exec_start(DEPLOY / "systemd" / "migrator-worker@.service"))
    assert worker == [["worker", "--config", "${MIGRATOR_CONFIG}", "--roots", "${MIGRATOR_ROOTS}",
                       "--concurrency", "2"]]


def test_compose_worker_scalable() -> None:
    worker = compose()["services"]["worker"]
    # docker compose up --scale fails for a service with a fixed container name or host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][:1] == ["worker"]
    assert "--concurrency" in worker["command"]


def test_compose_planner_before_dispatcher() -> None:
    services = compose()["services"]
    assert services["planner"]["command"][:1] == ["plan"]
    assert services["dispatcher"]["command"][:1] == ["start"]
    condition = services["dispatcher"]["depends_on"]["planner"]["condition"]
    assert condition == "service_completed_successfully"


# --- Celery and Flower -------------------------------------------------------


def test_flower_importable() -> None:
    importlib.import_module("flower.command")


def test_celery_app_resolves_with_example_config() -> None:
    # A child process, because workers.app reads MIGRATOR_CONFIG once, when first imported.
    environment = dict(os.environ, MIGRATOR_CONFIG=str(EXAMPLE_CONFIG))
    for name in read_env_file(EXAMPLE_ENV):
        environment[name] = PLACEHOLDER
    script = ("from celery.app.utils import find_app\n"
              "app = find_app('workers.app')\n"
              "print(app.main)\n"
              "print(app.conf.broker_url)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    main, broker_url = result.stdout.split()
    assert main == "pacs_migrator"
    assert broker_url == f"redis://:{PLACEHOLDER}@redis:6379/0"


def test_flower_commands_use_app_and_known_options() -> None:
    import flower.options  # noqa: F401  (defines Flower's options)
    from tornado.options import options

    defined = set(options._options)
    for source, tokens in celery_flower_commands():
        assert tokens[1:3] == ["--app", "workers.app"], f"{source}: {tokens}"
        assert tokens[3] == "flower", f"{source}: {tokens}"
        for argument in tokens[4:]:
            assert argument.startswith("--"), f"{source}: unexpected argument {argument!r}"
            name = argument[2:].split("=", 1)[0]
            assert name in defined, f"{source}: Flower has no option --{name}"
        assert f"--port={FLOWER_PORT}" in tokens, source
    # Both start Flower with FLOWER_BASIC_AUTH, which Flower maps to --basic-auth.
    assert "basic-auth" in defined


def test_flower_basic_auth_from_environment() -> None:
    flower_service = " ".join(compose()["services"]["flower"]["command"])
    flower_unit = (DEPLOY / "systemd" / "migrator-flower.service").read_text(encoding="utf-8")
    assert 'FLOWER_BASIC_AUTH="$$FLOWER_USER:$$FLOWER_PASSWORD"' in flower_service
    assert 'FLOWER_BASIC_AUTH="$${FLOWER_USER}:$${FLOWER_PASSWORD}"' in flower_unit
    for name in ("FLOWER_USER", "FLOWER_PASSWORD"):
        assert name in read_env_file(EXAMPLE_ENV)


def test_flower_published_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"service {name} publishes {port} beyond 127.0.0.1"
    assert compose()["services"]["flower"]["ports"] == [f"127.0.0.1:{FLOWER_PORT}:{FLOWER_PORT}"]
    _, tokens = celery_flower_commands()[1]
    assert "--address=127.0.0.1" in tokens


# --- configuration -----------------------------------------------------------


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_example(monkeypatch)
    assert settings.broker is not None
    assert settings.broker.url == "redis://redis:6379/0"
    assert settings.state.password_env == "MIGRATOR_STATE_PASSWORD"
    state_url = settings.state.sqlalchemy_url()
    assert state_url.host == "postgres"
    assert state_url.password == PLACEHOLDER
    assert set(settings.destinations) == {"main", "nonpixel"}
    assert [root.name for root in settings.roots] == [f"share{i:02d}" for i in range(1, 12)]


def test_example_config_names_compose_services(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_example(monkeypatch)
    services = compose()["services"]
    assert settings.state.sqlalchemy_url().host in services
    assert "redis" in services
    assert settings.sinbin.host == "sinbin"
    sinbin = services["sinbin"]["environment"]
    assert sinbin["ORTHANC__DICOM_AET"] == settings.sinbin.ae_title
    assert int(sinbin["ORTHANC__DICOM_PORT"]) == settings.sinbin.port
    postgres = services["postgres"]["environment"]
    assert settings.state.sqlalchemy_url().username == postgres["POSTGRES_USER"]


def test_password_variables_in_example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_example(monkeypatch)
    needed = {settings.state.password_env, settings.legacy.password_env}
    assert settings.broker is not None
    needed.add(settings.broker.password_env)
    needed.discard(None)
    missing = needed - set(read_env_file(EXAMPLE_ENV))
    assert not missing, f"{EXAMPLE_ENV.name} lacks {sorted(str(name) for name in missing)}"


# --- storage roots -----------------------------------------------------------


def test_compose_mounts_every_root_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    roots = {str(root.path) for root in load_example(monkeypatch).roots}
    for name, service in migrator_services().items():
        targets = {}
        for volume in service["volumes"]:
            source, target, *mode = volume.split(":")
            targets[target] = mode
        for path in sorted(roots):
            assert path in targets, f"service {name} does not mount the storage root {path}"
        for target, mode in targets.items():
            assert mode == ["ro"], f"service {name} mounts {target} writable"


def test_no_writable_host_mounts() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(("/", ".")):
                assert volume.endswith(":ro"), f"service {name} mounts host path {volume} writable"


def test_vm_roots_exist_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    configured = {root.name for root in load_example(monkeypatch).roots}
    for path in VM_ENV_FILES:
        roots = read_env_file(path)["MIGRATOR_ROOTS"].split(",")
        unknown = set(roots) - configured
        assert not unknown, f"{path.name} names roots missing from the example config: {sorted(unknown)}"


def test_each_root_on_one_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    owners: dict[str, list[str]] = {root.name: [] for root in load_example(monkeypatch).roots}
    for path in VM_ENV_FILES:
        for root in read_env_file(path)["MIGRATOR_ROOTS"].split(","):
            owners.setdefault(root, []).append(path.name)
    for root, vms in owners.items():
        assert len(vms) == 1, f"root {root} is served by {vms or 'no VM'}"


def test_vm_env_files_without_secrets() -> None:
    for path in VM_ENV_FILES:
        values = read_env_file(path)
        assert set(values) == {"MIGRATOR_CONFIG", "MIGRATOR_ROOTS"}, path.name
        assert values["MIGRATOR_CONFIG"] == CONFIG_PATH, path.name


def test_units_read_secrets_file() -> None:
    for path in UNITS:
        text = path.read_text(encoding="utf-8")
        assert "EnvironmentFile=/etc/migrator/secrets.env" in text, path.name


# --- secrets -----------------------------------------------------------------


def test_example_env_values_are_placeholders() -> None:
    values = read_env_file(EXAMPLE_ENV)
    assert values
    for name, value in values.items():
        assert PLACEHOLDER in value, f"{EXAMPLE_ENV.name}: {name} is not a placeholder"
        assert value.replace(PLACEHOLDER, "").strip('{}":') in ("", "reviewer"), (
            f"{EXAMPLE_ENV.name}: {name} holds more than a placeholder")


def deployment_files() -> list[Path]:
    files = [REPO / "Dockerfile", COMPOSE_FILE]
    files += [path for path in DEPLOY.rglob("*") if path.is_file()]
    return files


def test_no_secret_in_files() -> None:
    assignment = re.compile(r"(?i)(password|passwd|secret|token)\s*[=:]\s*(\S+)")
    url_with_password = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    for path in deployment_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{path.relative_to(REPO)}:{number}"
            assert not url_with_password.search(line), f"{where}: a URL with a password"
            for _, value in assignment.findall(line):
                value = value.strip("\"'")
                assert value.startswith(PLACEHOLDER) or value.startswith("$"), (
                    f"{where}: a value that looks like a secret")


# --- image -------------------------------------------------------------------


def test_dockerfile_installs_project() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert "dcmtk" in text
    assert re.search(r"^RUN pip install [^\n]* \. ", text, re.MULTILINE)
    assert 'ENTRYPOINT ["migrator"]' in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for name in source.split():
            assert (REPO / name).exists(), f"Dockerfile copies {name}, which is not in the repository"
