from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from opik_cipx.store import migrations
from opik_cipx.store.migrations import MIGRATIONS, Migration, migrate, transaction


def _open(path: Path, *, autocommit: bool = True) -> sqlite3.Connection:
    if autocommit:
        return sqlite3.connect(path, isolation_level=None)
    return sqlite3.connect(path)


def _recorded(conn: sqlite3.Connection) -> list[tuple[str, float]]:
    return list(conn.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid"))


def test_migration_names_are_numbered_unique_and_in_order() -> None:
    names = [m.__name__ for m in MIGRATIONS]
    assert names, "no migrations registered"
    assert all(re.fullmatch(r"m\d{3}_[a-z0-9_]+", n) for n in names), names
    assert len(set(names)) == len(names)
    assert [int(n[1:4]) for n in names] == list(range(1, len(names) + 1))


def test_fresh_database_gets_every_migration_recorded_in_order(tmp_path: Path) -> None:
    conn = _open(tmp_path / "db.sqlite3")
    ran = migrate(conn)
    assert ran == [m.__name__ for m in MIGRATIONS]
    recorded = _recorded(conn)
    assert [name for name, _ in recorded] == ran
    assert all(isinstance(at, float) and at > 0 for _, at in recorded)


def test_second_migrate_applies_nothing_and_records_nothing_new(tmp_path: Path) -> None:
    conn = _open(tmp_path / "db.sqlite3")
    migrate(conn)
    before = _recorded(conn)
    assert migrate(conn) == []
    assert _recorded(conn) == before
    conn.close()
    # And again from a new connection, as a restarted gateway would see it.
    assert migrate(_open(tmp_path / "db.sqlite3")) == []


def test_schema_has_the_spool_tables_and_listing_indexes(tmp_path: Path) -> None:
    conn = _open(tmp_path / "db.sqlite3")
    migrate(conn)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"_migrations", "exchanges", "blobs"} <= tables
    index_columns = {
        tuple(c[2] for c in conn.execute(f"PRAGMA index_info({name!r})"))
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'exchanges'"
        )
    }
    assert ("started_at", "id") in index_columns
    assert ("session_id", "started_at", "id") in index_columns
    assert ("model", "started_at", "id") in index_columns
    assert ("kind", "started_at", "id") in index_columns
    blob_columns = [r[1] for r in conn.execute("PRAGMA table_info(blobs)")]
    assert blob_columns == ["hash", "data", "size", "refs"]


def test_appended_migration_runs_alone_on_an_existing_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _open(tmp_path / "db.sqlite3")
    migrate(conn)

    def m999_add_notes(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_add_notes])
    assert migrate(conn) == ["m999_add_notes"]
    conn.execute("INSERT INTO notes (body) VALUES ('x')")
    assert migrate(conn) == []


def test_failing_migration_is_rolled_back_and_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = _open(tmp_path / "db.sqlite3")
    migrate(conn)

    def m998_half_done(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m998_half_done])
    with pytest.raises(RuntimeError, match="boom"):
        migrate(conn)
    assert not conn.in_transaction
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half'").fetchone() is None
    assert "m998_half_done" not in [n for n, _ in _recorded(conn)]

    def m998_fixed(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half (x INTEGER)")

    fixed: Migration = m998_fixed
    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, fixed])
    assert migrate(conn) == ["m998_fixed"]


def test_migrate_works_on_a_connection_with_implicit_transactions(tmp_path: Path) -> None:
    conn = _open(tmp_path / "db.sqlite3", autocommit=False)
    assert migrate(conn) == [m.__name__ for m in MIGRATIONS]
    assert not conn.in_transaction
    conn.close()
    assert migrate(_open(tmp_path / "db.sqlite3")) == []


def test_registering_a_duplicate_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrations, "MIGRATIONS", list(MIGRATIONS))

    def m001_exchanges(c: sqlite3.Connection) -> None:
        raise AssertionError("never runs")

    with pytest.raises(ValueError, match="duplicate"):
        migrations.migration(m001_exchanges)


def test_nested_transaction_is_one_commit_and_rolls_back_alone(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ValueError):
            with transaction(conn):
                conn.execute("INSERT INTO t VALUES (2)")
                raise ValueError("inner unit fails")
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (3)")
        # Nothing is committed until the outer transaction ends.
        other = sqlite3.connect(tmp_path / "n.db")
        assert other.execute("SELECT count(*) FROM t").fetchone() == (0,)
        other.close()
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == [1, 3]
    assert not conn.in_transaction
