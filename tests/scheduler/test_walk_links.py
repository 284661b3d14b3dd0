"""Walking a storage root with symbolic links and special files in it."""

from __future__ import annotations

import os
from pathlib import Path

from scheduler.plan.walk import iter_folders


def _walk(root: Path) -> tuple[dict[str, list[str]], list[str], list[str]]:
    errors: list[str] = []
    skipped: list[str] = []
    folders = {folder: [stat.name for stat in files] for folder, files in iter_folders(root, errors, skipped)}
    return folders, errors, skipped


def test_walk_follows_only_links_to_files_inside(tmp_path: Path) -> None:
    """A link to a file in the root is listed; loops, folders, broken and outside links are not."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "image.dcm").write_bytes(b"x" * 10)
    (outside / "elsewhere.dcm").write_bytes(b"y")
    links = {
        "to-image.dcm": Path("a/image.dcm"),
        "loop-1.dcm": Path("loop-2.dcm"),
        "loop-2.dcm": Path("loop-1.dcm"),
        "to-parent": Path(".."),
        "to-folder": Path("a"),
        "broken.dcm": Path("missing.dcm"),
        "out-file.dcm": outside / "elsewhere.dcm",
        "out-folder": outside,
    }
    for name, target in links.items():
        (root / name).symlink_to(target)

    folders, errors, skipped = _walk(root)

    assert folders == {"": ["to-image.dcm"], "a": ["image.dcm"]}
    assert errors == []
    reasons = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in skipped}
    assert reasons == {
        f"{root}/loop-1.dcm": "symbolic link loop; not followed",
        f"{root}/loop-2.dcm": "symbolic link loop; not followed",
        f"{root}/to-parent": f"symbolic link to {tmp_path.resolve()}, outside the root; not followed",
        f"{root}/to-folder": f"symbolic link to the folder {root.resolve() / 'a'}; links to folders are "
                             "not followed",
        f"{root}/broken.dcm": "symbolic link whose target cannot be reached (No such file or directory); "
                              "not followed",
        f"{root}/out-file.dcm": f"symbolic link to {outside.resolve() / 'elsewhere.dcm'}, outside the root; "
                                "not followed",
        f"{root}/out-folder": f"symbolic link to {outside.resolve()}, outside the root; not followed",
    }


def test_walk_leaves_out_pipes(tmp_path: Path) -> None:
    """A named pipe is not listed, because opening it to read its header would wait forever."""
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "pipe.dcm")
    (root / "image.dcm").write_bytes(b"x")
    folders, errors, skipped = _walk(root)
    assert folders == {"": ["image.dcm"]}
    assert errors == skipped == []
