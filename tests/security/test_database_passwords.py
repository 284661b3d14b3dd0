"""Database passwords stay out of every message: real commands with PostgreSQL URLs whose passwords are set.

The local PostgreSQL trusts 127.0.0.1, so the state database opens with
any password. The legacy database is a closed port on 127.0.0.1, so every
command that uses it fails and prints its URL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from pydicom.data import get_testdata_file
from sqlalchemy.engine import make_url

from tests.peers import free_port

#: Passwords with characters that a URL must escape, so an unmasked URL shows them escaped.
STATE_PASSWORD = "St8-pw/leak@check%1"
LEGACY_PASSWORD = "Lg9-pw:leak#check?2"

CONFIG = """\
[state]
url = "{state_url}"
password_env = "MIGRATOR_TEST_STATE_PASSWORD"

[legacy]
url = "postgresql+psycopg://reader@127.0.0.1:{legacy_port}/pacs"
password_env = "MIGRATOR_TEST_LEGACY_PASSWORD"
query = "SELECT sop AS SOPInstanceUID FROM instances WHERE sop IN :uids"

[[roots]]
name = "root1"
path = "{root}"

[destinations.main]
ae_title = "MAIN"
host = "127.0.0.1"
port = {closed_port}

[sinbin]
ae_title = "SINBIN"
host = "127.0.0.1"
port = {closed_port}

[run]
processes = 1
"""


def _run(config: Path, *command: str) -> str:
    """Run ``migrator -v COMMAND`` and return its stdout and stderr together."""
    environment = {**os.environ, "MIGRATOR_TEST_STATE_PASSWORD": STATE_PASSWORD,
                   "MIGRATOR_TEST_LEGACY_PASSWORD": LEGACY_PASSWORD, "COLUMNS": "2000"}
    result = subprocess.run([sys.executable, "-m", "migrator", "-v", *command, "--config", str(config)],
                            capture_output=True, text=True, timeout=120, env=environment)
    return result.stdout + result.stderr


def _leaks(output: str) -> list[str]:
    """Return each form of either password found in ``output``, also across wrapped lines."""
    joined = "".join(output.split())
    forms = {form for password in (STATE_PASSWORD, LEGACY_PASSWORD)
             for form in (password, quote(password, safe=""), quote(password))}
    return sorted(form for form in forms if form in output or form in joined)


def _write_config(tmp_path: Path, state_url: str, legacy_port: int) -> Path:
    root = tmp_path / "root1"
    root.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct.dcm")  # type: ignore[arg-type]
    config = tmp_path / "migrator.toml"
    config.write_text(CONFIG.format(state_url=state_url, legacy_port=legacy_port, closed_port=free_port(),
                                    root=root), encoding="utf-8")
    return config


def test_commands_mask_passwords(tmp_path: Path, postgres_url: str) -> None:
    """config check, plan, start and status print the URLs with *** for the password."""
    state_url = make_url(postgres_url).set(username="postgres").render_as_string(hide_password=False)
    legacy_port = free_port()
    config = _write_config(tmp_path, state_url, legacy_port)

    outputs = {command: _run(config, *command.split()) for command in ("config check", "plan", "start", "status")}
    assert f"ok     state database {state_url}" in outputs["config check"]
    assert (f"failed legacy database and reconciliation query: cannot connect to "
            f"postgresql+psycopg://reader:***@127.0.0.1:{legacy_port}/pacs") in outputs["config check"]
    assert "Traceback" not in outputs["config check"]
    assert "indexing: 1 file(s) listed" in outputs["plan"]
    assert (f"error: the reconciliation query failed on postgresql+psycopg://reader:***@127.0.0.1:"
            f"{legacy_port}/pacs") in outputs["start"]
    assert "batches: planned 1" in outputs["status"]
    for command, output in outputs.items():
        assert _leaks(output) == [], f"{command} printed a password:\n{output}"


def test_unreachable_state_masks_password(tmp_path: Path) -> None:
    """A state database that refuses the connection is named with *** for the password."""
    port = free_port()
    config = _write_config(tmp_path, f"postgresql+psycopg://migrator@127.0.0.1:{port}/migrator", free_port())
    masked = f"postgresql+psycopg://migrator:***@127.0.0.1:{port}/migrator"
    outputs = {command: _run(config, *command.split()) for command in ("config check", "status", "start")}
    for command, output in outputs.items():
        assert f"cannot open the state database {masked}" in output, f"{command}:\n{output}"
        assert _leaks(output) == [], f"{command} printed a password:\n{output}"
