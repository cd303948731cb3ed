"""The recovery folder as Kubernetes hands it over: missing, existing and empty (with the
`lost+found` of a fresh volume), or holding the partitions of a previous run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from flows.stream import prepare_recovery_dir


def _parts(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("part-*.sqlite3"))


def test_a_missing_folder_is_created_with_one_partition_per_worker(tmp_path: Path) -> None:
    recovery = tmp_path / "a" / "recovery"
    prepare_recovery_dir(recovery, 3)
    assert _parts(recovery) == ["part-0.sqlite3", "part-1.sqlite3", "part-2.sqlite3"]


def test_an_existing_empty_volume_is_initialized(tmp_path: Path) -> None:
    recovery = tmp_path / "volume"
    (recovery / "lost+found").mkdir(parents=True)
    prepare_recovery_dir(recovery, 2)
    assert _parts(recovery) == ["part-0.sqlite3", "part-1.sqlite3"]
    assert (recovery / "lost+found").is_dir()


def test_existing_partitions_are_the_state_to_resume_and_are_left_alone(tmp_path: Path) -> None:
    recovery = tmp_path / "recovery"
    prepare_recovery_dir(recovery, 2)
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        before = db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
        db.execute("CREATE TABLE marker (x INTEGER)")
    prepare_recovery_dir(recovery, 4)  # a restart with more workers does not re-initialize
    assert _parts(recovery) == ["part-0.sqlite3", "part-1.sqlite3"]
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        names = db.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall()
    assert ("marker",) in names and set(before) <= set(names)


def test_each_process_creates_only_its_share_so_one_folder_or_one_per_process_both_work(
        tmp_path: Path) -> None:
    """Bytewax needs every partition of the cluster exactly once over all processes' folders."""
    shared = tmp_path / "shared"
    for process in range(2):
        prepare_recovery_dir(shared, 4, process, 2)
    assert _parts(shared) == [f"part-{k}.sqlite3" for k in range(4)]
    own = [tmp_path / f"pod-{i}" for i in range(2)]
    for process, folder in enumerate(own):
        prepare_recovery_dir(folder, 4, process, 2)
    assert [_parts(f) for f in own] == [["part-0.sqlite3", "part-2.sqlite3"],
                                        ["part-1.sqlite3", "part-3.sqlite3"]]
    assert not list(own[0].glob(".init-*"))  # no scratch folder left behind
    for k, folder in ((0, own[0]), (3, own[1])):  # each file says which of how many it is
        with sqlite3.connect(folder / f"part-{k}.sqlite3") as db:
            assert db.execute("SELECT part_index, part_count FROM parts").fetchall() == [(k, 4)]
