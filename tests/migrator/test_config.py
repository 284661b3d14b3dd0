"""Tests for loading and validating the migration configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from migrator.config import (
    SINBIN,
    BrokerConfig,
    ReconcileOutcome,
    default_rules,
    load_settings,
)
from migrator.errors import ConfigError

PASSWORD_ENV = "PACS_MIGRATOR_TEST_LEGACY_PASSWORD"
PASSWORD = "Xq7-tr0ub4dor-pw"

MINIMAL_CONFIG = f"""\
[state]
url = "sqlite:///state.db"

[legacy]
url = "postgresql+psycopg://migrator@127.0.0.1:5432/pacs"
password_env = "{PASSWORD_ENV}"
query = \"\"\"
SELECT i.sop_iuid AS SOPInstanceUID, p.pat_id AS PatientID, i.file_path AS FilePath
FROM instance i JOIN patient p ON p.pk = i.patient_fk
WHERE i.sop_iuid IN :uids
\"\"\"

[[roots]]
name = "share03"
path = "archive/share03"
legacy_path_prefix = '\\\\pacs01\\share03\\'

[destinations.main]
ae_title = "NEWPACS"
host = "127.0.0.1"
port = 11112

[sinbin]
ae_title = "SINBIN"
host = "127.0.0.1"
port = 11113
"""

RULES = """
[[routing.rules]]
name = "{name}"
to = "{to}"
"""


def write_config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "migrator.toml"
    path.write_text(text, encoding="utf-8")
    return path


def replaced(old: str, new: str) -> str:
    """Return the minimal configuration with ``old`` replaced by ``new``."""
    assert old in MINIMAL_CONFIG, f"{old!r} is not in the minimal configuration"
    return MINIMAL_CONFIG.replace(old, new, 1)


def load_error(tmp_path: Path, text: str) -> str:
    """Load ``text`` as a configuration file and return the ConfigError message."""
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return str(caught.value)


class TestValidConfig:
    def test_minimal_config_loads(self, tmp_path: Path) -> None:
        """A file with only the required sections loads with their values."""
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))

        assert settings.legacy.password_env == PASSWORD_ENV
        assert settings.legacy.chunk_size == 1000
        assert settings.legacy.path_column == "FilePath"
        assert [root.name for root in settings.roots] == ["share03"]
        assert settings.roots[0].legacy_path_prefix == "\\\\pacs01\\share03\\"
        assert settings.destinations["main"].port == 11112
        assert settings.sinbin.ae_title == "SINBIN"
        assert settings.run.ae_title == "MIGRATOR"

    def test_default_rules_when_none_configured(self, tmp_path: Path) -> None:
        """Without [[routing.rules]] the default rules apply."""
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))
        expected = default_rules(settings.destinations)

        assert settings.routing.rules == []
        assert [rule.name for rule in settings.route_rules] == [rule.name for rule in expected]
        assert settings.route_rules[0].reconciliation == [ReconcileOutcome.ORPHAN]

    def test_configured_rules_replace_defaults(self, tmp_path: Path) -> None:
        """Configured rules are used as given, without the default rules."""
        text = MINIMAL_CONFIG + RULES.format(name="everything", to="main")
        settings = load_settings(write_config(tmp_path, text))

        assert [rule.name for rule in settings.route_rules] == ["everything"]


class TestInvalidConfig:
    @pytest.mark.parametrize(
        ("old", "new", "key", "value", "expected"),
        [
            pytest.param(
                "port = 11112", "port = 70000",
                "destinations.main.port", "70000", "less than or equal to 65535",
                id="port-too-large",
            ),
            pytest.param(
                'ae_title = "NEWPACS"', 'ae_title = "NEWPACS_ARCHIVE_01"',
                "destinations.main.ae_title", "'NEWPACS_ARCHIVE_01'", "at most 16 characters",
                id="ae-title-too-long",
            ),
            pytest.param(
                "WHERE i.sop_iuid IN :uids", "WHERE i.sop_iuid = 'x'",
                "legacy.query", "i.sop_iuid = 'x'", "IN :uids",
                id="query-without-uids",
            ),
            pytest.param(
                'name = "share03"', 'name = "share 03"',
                "roots.0.name", "'share 03'", "should match pattern",
                id="root-name-with-space",
            ),
            pytest.param(
                "[legacy]\n", "[legacy]\nchunk_size = 5000\n",
                "legacy.chunk_size", "5000", "less than or equal to 1000",
                id="chunk-size-too-large",
            ),
        ],
    )
    def test_invalid_value_is_named(
        self, tmp_path: Path, old: str, new: str, key: str, value: str, expected: str
    ) -> None:
        """The message names the key, the bad value and what is expected."""
        message = load_error(tmp_path, replaced(old, new))

        assert f"{key}:" in message
        assert value in message
        assert expected in message

    def test_rule_to_unknown_destination(self, tmp_path: Path) -> None:
        """A rule sending to an undefined destination names it and the valid targets."""
        message = load_error(tmp_path, MINIMAL_CONFIG + RULES.format(name="to archive", to="archive"))

        assert "rule 'to archive'" in message
        assert "unknown destination 'archive'" in message
        assert "expected one of ['main', 'sinbin', 'skip']" in message
        assert "sqlite:///state.db" not in message, "the message repeats the whole file"

    @pytest.mark.parametrize("target", [SINBIN, "skip"])
    def test_sinbin_or_skip_rule_needs_reason(self, tmp_path: Path, target: str) -> None:
        """A rule to the sin bin or skip without a reason is rejected."""
        message = load_error(tmp_path, MINIMAL_CONFIG + RULES.format(name="drop SR", to=target))

        assert "routing.rules.0:" in message
        assert f"rule 'drop SR' sends to {target} and needs a reason" in message

    def test_url_with_password_rejected(self, tmp_path: Path) -> None:
        """A URL carrying a password is rejected without echoing the password."""
        text = replaced("migrator@127.0.0.1", f"migrator:{PASSWORD}@127.0.0.1")
        message = load_error(tmp_path, text)

        assert "legacy.url:" in message
        assert "contains a password" in message
        assert "password_env" in message
        assert PASSWORD not in message

    def test_url_query_password_rejected(self, tmp_path: Path) -> None:
        """A password passed as a URL query parameter is rejected like one in the netloc."""
        text = replaced("127.0.0.1:5432/pacs", f"127.0.0.1:5432/pacs?password={PASSWORD}")
        message = load_error(tmp_path, text)

        assert "legacy.url:" in message
        assert PASSWORD not in message

    def test_missing_sinbin_section(self, tmp_path: Path) -> None:
        """A file without [sinbin] names the missing section."""
        text = MINIMAL_CONFIG.split("[sinbin]")[0]
        message = load_error(tmp_path, text)

        assert "sinbin: Field required (missing)" in message

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML names the file and the parse error."""
        message = load_error(tmp_path, replaced('port = 11112', 'port = '))

        assert str(tmp_path / "migrator.toml") in message
        assert "is not valid TOML" in message
        assert "line" in message

    def test_missing_file(self, tmp_path: Path) -> None:
        """A configuration path that does not exist names the path."""
        path = tmp_path / "absent.toml"
        with pytest.raises(ConfigError) as caught:
            load_settings(path)

        assert str(caught.value).startswith(f"configuration file not found: {path};")
        assert "--config" in str(caught.value)


class TestPassword:
    def test_password_from_environment(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The URL gets its password from the variable named by password_env."""
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))
        url = settings.legacy.sqlalchemy_url()

        assert url.password == PASSWORD
        assert url.username == "migrator"
        assert url.host == "127.0.0.1"

    def test_password_not_in_settings_text(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither str() nor repr() of the settings contains the password."""
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))
        settings.legacy.sqlalchemy_url()

        assert PASSWORD not in str(settings)
        assert PASSWORD not in repr(settings)
        assert PASSWORD not in repr(settings.legacy)

    def test_password_not_in_error_message(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An invalid file does not echo the password from the environment."""
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        message = load_error(tmp_path, replaced("port = 11112", "port = 70000"))

        assert PASSWORD not in message

    def test_missing_password_variable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An unset password variable raises ConfigError naming the variable."""
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))

        with pytest.raises(ConfigError) as caught:
            settings.legacy.sqlalchemy_url()

        assert f"environment variable {PASSWORD_ENV} is not set" in str(caught.value)
        assert "postgresql+psycopg://migrator@127.0.0.1:5432/pacs" in str(caught.value)

    def test_no_password_variable_needed(self, tmp_path: Path) -> None:
        """A database without password_env gets a URL without a password."""
        settings = load_settings(write_config(tmp_path, MINIMAL_CONFIG))

        assert settings.state.password_env is None
        assert settings.state.sqlalchemy_url().password is None


class TestRelativePaths:
    def test_paths_resolve_against_config_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Relative paths resolve against the file's folder, not the working directory."""
        write_config(tmp_path / "conf", MINIMAL_CONFIG)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(tmp_path)
        settings = load_settings(Path("conf") / "migrator.toml")
        monkeypatch.chdir(elsewhere)
        config_folder = (tmp_path / "conf").resolve()

        assert settings.base_dir == config_folder
        assert settings.resolve(settings.roots[0].path) == config_folder / "archive" / "share03"
        assert settings.state.sqlalchemy_url(settings.base_dir).database == str(
            config_folder / "state.db"
        )

    def test_absolute_paths_unchanged(self, tmp_path: Path) -> None:
        """Absolute paths are kept as written."""
        absolute = tmp_path / "archive"
        text = replaced('path = "archive/share03"', f"path = '{absolute}'")
        text = text.replace("sqlite:///state.db", f"sqlite:///{tmp_path / 'state.db'}")
        settings = load_settings(write_config(tmp_path / "conf", text))

        assert settings.resolve(settings.roots[0].path) == absolute
        assert settings.state.sqlalchemy_url(settings.base_dir).database == str(tmp_path / "state.db")



class TestMessages:
    def test_unknown_key_named(self, tmp_path: Path) -> None:
        """A misspelt key is reported as unknown, without pydantic's wording."""
        message = load_error(tmp_path, replaced('port = 11112', 'port = 11112\nae_titel = "X"'))

        assert "ae_titel: unknown key" in message
        assert "Extra inputs" not in message

    def test_value_error_prefix_removed(self, tmp_path: Path) -> None:
        """Validator messages appear without the 'Value error, ' prefix."""
        message = load_error(tmp_path, replaced("IN :uids", "IN (1)"))

        assert "Value error" not in message
        assert "legacy.query: the query must filter with 'IN :uids'" in message


class TestBroker:
    def test_broker_password_rejected(self) -> None:
        """A Redis URL with a password in it is rejected."""
        with pytest.raises(ValidationError, match="broker URL contains a password"):
            BrokerConfig(url="redis://:secret@127.0.0.1:6379/0")

    def test_broker_password_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """password_env supplies the Redis password, URL-quoted."""
        monkeypatch.setenv("TEST_REDIS_PASSWORD", "p@ss/word")
        broker = BrokerConfig(url="redis://127.0.0.1:6379/0", password_env="TEST_REDIS_PASSWORD")
        assert broker.broker_url() == "redis://:p%40ss%2Fword@127.0.0.1:6379/0"

    def test_queue_per_root(self) -> None:
        """Each storage root has its own queue under the prefix."""
        assert BrokerConfig(url="redis://127.0.0.1:6379/0", queue_prefix="site1").queue("share03") == \
            "site1.share03"
