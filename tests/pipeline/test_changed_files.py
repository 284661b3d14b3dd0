"""Files that change between ``migrator plan`` and ``migrator start`` are never sent as something else.

Each case changes a file of the demo archive after the plan: cut short, cut
to its first 200 bytes while it waits for the sin bin, or replaced by
another instance's file under the same name. The file fails with a reason
that names the change, and nothing else is stored or recorded in its place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scheduler.dispatch.embedded import run_embedded
from scheduler.plan.run import plan
from tests.support import Migration, prepare_migration, running_scps


def _path(migration: Migration, root: str, rel_path: str) -> Path:
    return migration.settings.resolve(migration.settings.root(root).path) / rel_path


def test_changed_files_fail_with_reason(tmp_path: Path, sqlite_url: str) -> None:
    with running_scps(tmp_path) as scps:
        migration = prepare_migration(tmp_path, sqlite_url, {n: (s.ae_title, s.port) for n, s in scps.items()})
        plan(migration.settings, migration.sessions)
        main = [e for e in migration.expected("main") if e.transfer_syntax and "4.90" in e.transfer_syntax]
        truncated, replaced, donor = main[0], main[1], main[2]
        held = next(e for e in migration.expected("sinbin") if e.reason == "orphan")

        path = _path(migration, truncated.root, truncated.rel_path)
        path.write_bytes(path.read_bytes()[:-2000])
        path = _path(migration, held.root, held.rel_path)
        path.write_bytes(path.read_bytes()[:200])
        shutil.copyfile(_path(migration, donor.root, donor.rel_path),
                        _path(migration, replaced.root, replaced.rel_path))

        run_embedded(migration.settings, migration.sessions)
    outcomes = migration.outcomes()
    reasons = {e.rel_path: migration.audit_of(e)[-1].reason or "" for e in (truncated, replaced, held)}

    assert outcomes[(truncated.root, truncated.rel_path)] == "failed"
    assert "truncated file" in reasons[truncated.rel_path]
    assert truncated.sop_instance_uid not in scps["main"].received

    assert outcomes[(held.root, held.rel_path)] == "failed"
    assert "missing (0008,0016) SOP Class UID" in reasons[held.rel_path]
    assert held.sop_instance_uid not in scps["sinbin"].received

    assert outcomes[(replaced.root, replaced.rel_path)] == "failed"
    assert f"now contains SOP Instance UID {donor.sop_instance_uid}" in reasons[replaced.rel_path]
    assert scps["main"].arrivals.count(donor.sop_instance_uid) == 1

    others = [e for e in migration.archive.expected
              if e.destination != "unreadable" and e not in (truncated, replaced, held)]
    assert all(outcomes[(e.root, e.rel_path)] in ("sent", "sinbinned") for e in others)
