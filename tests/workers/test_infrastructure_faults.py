"""A distributed run that meets a Redis restart, a PostgreSQL restart and a destination outage.

Redis and PostgreSQL here are private servers of the test (tests/servers.py),
so restarting them disturbs no other test. The new PACS is Orthanc (main
and non-pixel), stopped for 5 s in the middle of the run. The run must end
by itself with every instance in the outcome the generator's manifest
expects, and ``migrator verify`` must then find every study complete in
Orthanc.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from loadtest.archive import (
    ArchiveSpec,
    Endpoint,
    RunSettings,
    generate_archive,
    read_manifest,
)
from loadtest.verify import compare, recorded_files
from migrator.config import load_settings
from migrator.demo.scp import StorageSCP
from migrator.state.db import open_state
from tests.peers import OrthancPeer
from tests.servers import PostgresServer, RedisServer
from tests.support import CALLING_AE
from tests.workers.celery_support import start_worker

SPEC = ArchiveSpec(instances=300, roots=3, seed=23, nonpixel_rate=0.03, mismatch_rate=0.03,
                   orphan_rate=0.02, duplicate_rate=0.02, merged_rate=0.1, instances_per_study=25)
#: The new PACS's AE title, for both the main and the non-pixel destination.
PACS_AE_TITLE = "NEWPACS"


def _wait_for(condition: Callable[[], bool], seconds: float, what: str, logs: Path) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                              for log in sorted(logs.glob("*.log")))
            raise AssertionError(f"timed out after {seconds} s waiting for {what}\n{tails}")
        time.sleep(0.1)


def _config(tmp_path: Path, state_url: str, broker_url: str, pacs: OrthancPeer, sinbin: StorageSCP) -> Path:
    endpoints = {name: Endpoint("127.0.0.1", pacs.dicom_port, PACS_AE_TITLE) for name in ("main", "nonpixel")}
    endpoints["sinbin"] = Endpoint("127.0.0.1", sinbin.port, sinbin.ae_title)
    archive = generate_archive(tmp_path / "archive", SPEC,
                               RunSettings(state_url=state_url, endpoints=endpoints,
                                           calling_ae_title=CALLING_AE, processes=1))
    config = archive.folder / "migrator.toml"
    # The destination is down for 5 s; a circuit open for the default 300 s would outlast the test.
    text = config.read_text().replace(
        "[destinations.main]\n", "[destinations.main]\ncircuit_breaker_seconds = 3\n")
    # One archive behind two destinations, so migrator verify compares them together.
    for section in ("[destinations.main]\n", "[destinations.nonpixel]\n"):
        text = text.replace(section, f'{section}verify_archive = "newpacs"\n')
    config.write_text(text)
    with config.open("a") as file:
        file.write("\n[batches]\nmax_instances = 10\n"
                   "\n[retries]\nmax_retries = 10\nbackoff_seconds = 1\nmax_backoff_seconds = 4\n"
                   f'\n[broker]\nurl = "{broker_url}"\nqueue_prefix = "test-{uuid.uuid4().hex[:10]}"\n'
                   "max_in_flight_per_root = 2\n")
    return config


def _run(*arguments: str, log: Path) -> subprocess.Popen[Any]:
    return subprocess.Popen([sys.executable, "-m", "migrator", *arguments], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(600)
def test_run_survives_restarts_and_outage(tmp_path: Path, worker_processes: list[Any]) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    postgres = PostgresServer(tmp_path / "postgres").init().start()
    pacs = OrthancPeer(tmp_path / "pacs", PACS_AE_TITLE, [CALLING_AE]).start()
    sinbin = StorageSCP("SINBIN", tmp_path / "sinbin", [CALLING_AE]).start()
    dispatcher: subprocess.Popen[Any] | None = None
    try:
        admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE state"))
        admin.dispose()
        state_url = postgres.url.rsplit("/", 1)[0] + "/state"
        config = _config(tmp_path, state_url, redis_server.url, pacs, sinbin)
        planned = subprocess.run([sys.executable, "-m", "migrator", "plan", "--config", str(config)],
                                 capture_output=True, text=True, timeout=300)
        assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]

        for name in ("a", "b"):
            start_worker(config, ",".join(SPEC.root_names), worker_processes, tmp_path / f"worker-{name}.log")
        log = tmp_path / "dispatcher.log"
        dispatcher = _run("start", "--config", str(config), log=log)

        def stored() -> int:
            return len(pacs.instances())

        _wait_for(lambda: stored() >= 20, 120, "the first instances at the new PACS", tmp_path)
        redis_server.stop()
        time.sleep(2)
        redis_server.start()

        arrived = stored()
        _wait_for(lambda: stored() >= arrived + 30, 120, "deliveries after the Redis restart", tmp_path)
        postgres.stop()
        time.sleep(3)
        postgres.start()

        arrived = stored()
        _wait_for(lambda: stored() >= arrived + 30, 120, "deliveries after the PostgreSQL restart", tmp_path)
        pacs.stop()
        time.sleep(5)
        pacs.start()

        dispatcher.wait(timeout=450)
        output = log.read_text()
        assert dispatcher.returncode == 0, output[-3000:]
    finally:
        if dispatcher is not None and dispatcher.poll() is None:
            dispatcher.kill()
            dispatcher.wait()
        sinbin.stop()

    try:
        verified = subprocess.run([sys.executable, "-m", "migrator", "verify", "--config", str(config),
                                   "--output", str(tmp_path / "verify.csv")],
                                  capture_output=True, text=True, timeout=300)
        stored_uids = {pacs.instance_tags(orthanc_id)["SOPInstanceUID"] for orthanc_id in pacs.instances()}
    finally:
        pacs.stop()
    settings = load_settings(config)
    sessions = open_state(settings.state.sqlalchemy_url(settings.base_dir))
    try:
        recorded = recorded_files(sessions)
    finally:
        sessions.kw["bind"].dispose()
        postgres.stop()
        redis_server.stop()
    manifest = read_manifest(config.parent)
    assert compare(manifest, recorded) == []
    sent = {entry.sop_instance_uid for entry in manifest.files if entry.destination in ("main", "nonpixel")}
    assert stored_uids == sent
    held = {entry.sop_instance_uid for entry in manifest.files if entry.destination == "sinbin"}
    assert set(sinbin.received) == held
    assert "restarted" in output
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    assert "every study verified" in verified.stdout
