"""``migrator verify`` over DICOM TLS: C-FIND and Storage Commitment against Orthanc with TLS."""

from __future__ import annotations

import csv
from pathlib import Path

from typer.testing import CliRunner, Result

from migrator.cli import load_commands
from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.peers import free_port
from tests.security.tls_support import CertificateAuthority, TLSOrthanc, add_tls
from tests.support import CALLING_AE, prepare_migration


def _verify(config: Path, report: Path, *args: str) -> Result:
    return CliRunner().invoke(load_commands(), ["verify", "--config", str(config), "--output", str(report),
                                                *args])


def _rows(report: Path) -> list[dict[str, str]]:
    with report.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_verify_over_tls(tmp_path: Path, sqlite_url: str) -> None:
    """Instances sent over TLS verify over TLS; a ca_file of another CA ends verify with the reason."""
    trusted = CertificateAuthority(tmp_path / "ca", "trusted")
    rogue = CertificateAuthority(tmp_path / "ca", "rogue")
    report_port = free_port()
    with TLSOrthanc(tmp_path / "pacs", trusted.issue("orthanc"), trusted.cert, "NEWPACS", [CALLING_AE],
                    report_port=report_port) as pacs, \
            StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]) as sinbin:
        endpoints = {"main": ("NEWPACS", pacs.dicom_port), "nonpixel": ("NEWPACS", pacs.dicom_port),
                     "sinbin": ("SINBIN", sinbin.port)}
        migration = prepare_migration(tmp_path, sqlite_url, endpoints, processes=1)
        config = tmp_path / "migrator.toml"
        text = config.read_text(encoding="utf-8")
        for section in ("[destinations.main]\n", "[destinations.nonpixel]\n"):
            text = text.replace(section, f'{section}verify_archive = "newpacs"\n')
        config.write_text(text, encoding="utf-8")
        for destination in ("main", "nonpixel"):
            add_tls(config, destination, trusted.cert)
        migration.settings = load_settings(config)
        plan(migration.settings, migration.sessions)
        run_embedded(migration.settings, migration.sessions)
        sent = migration.expected("main") + migration.expected("nonpixel")
        assert migration.outcome_counts()["sent"] == len(sent)
        assert len(pacs.instances()) == len({e.sop_instance_uid for e in sent})

        report = tmp_path / "report.csv"
        result = _verify(config, report, "--commit", "--commit-listen", f"127.0.0.1:{report_port}",
                         "--commit-timeout", "30")
        assert result.exit_code == 0, result.output
        rows = _rows(report)
        studies = [row for row in rows if row["sop_instance_uid"] == "" and row["study_instance_uid"]]
        assert {row["result"] for row in studies} == {"verified"}
        assert sum(int(row["found_instances"]) for row in studies) == len(pacs.instances())
        assert [row for row in rows if row["result"] in ("not_committed", "commit_unconfirmed")] == []

        config.write_text(config.read_text(encoding="utf-8").replace(str(trusted.cert), str(rogue.cert)),
                          encoding="utf-8")
        result = _verify(config, tmp_path / "rejected.csv")
    assert result.exit_code == 3, result.output
    rejected = _rows(tmp_path / "rejected.csv")
    assert [row["result"] for row in rejected] == ["not_verified"]
    # Orthanc sends the CA certificate with its own, so OpenSSL finds a self-signed one in the chain.
    assert rejected[0]["detail"] == (
        f"destination main (NEWPACS@127.0.0.1:{pacs.dicom_port}) presented a TLS certificate that failed "
        "verification (self-signed certificate in certificate chain); check that tls.ca_file "
        f"{rogue.cert} contains the CA that signed the destination's certificate")
