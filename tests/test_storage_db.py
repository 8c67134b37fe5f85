"""Namespaced tables, atomic batches and snapshots over a real LevelDB."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flobc.storage.db import Database


@pytest.fixture
def db(tmp_path):
    with Database(tmp_path / "db") as database:
        yield database


def test_put_get_delete(db):
    table = db.table("t")
    assert table.get(b"k") is None and b"k" not in table
    table.put(b"k", b"v")
    assert table.get(b"k") == b"v" and b"k" in table
    table.delete(b"k")
    assert table.get(b"k") is None


def test_tables_with_overlapping_names_never_see_each_other(db):
    a, ab, a_b = db.table("a"), db.table("ab"), db.table("a\x01b")
    a.put(b"b\x00k", b"in a")
    ab.put(b"\x00k", b"in ab")
    a_b.put(b"k", b"in a-b")
    assert list(a.items()) == [(b"b\x00k", b"in a")]
    assert list(ab.items()) == [(b"\x00k", b"in ab")]
    assert list(a_b.items()) == [(b"k", b"in a-b")]
    assert ab.get(b"b\x00k") is None and a.get(b"\x00k") is None


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text(st.characters(exclude_characters="\x00",
                                            exclude_categories=("Cs",)), min_size=1,
                               max_size=4),
                       st.dictionaries(st.binary(max_size=6), st.binary(max_size=4),
                                       max_size=6),
                       max_size=6))
def test_every_table_holds_exactly_its_own_keys(tmp_path_factory, contents):
    with Database(tmp_path_factory.mktemp("db")) as database:
        for name, pairs in contents.items():
            for key, value in pairs.items():
                database.table(name).put(key, value, sync=False)
        for name, pairs in contents.items():
            assert list(database.table(name).items()) == sorted(pairs.items())


@pytest.mark.parametrize("name", ["", "a\x00b", b"bytes", "\ud800"])
def test_bad_table_names_are_refused(db, name):
    with pytest.raises(ValueError, match="table name"):
        db.table(name)


def test_items_by_prefix_in_order_and_reversed(db):
    table = db.table("t")
    for key in (b"b2", b"a1", b"b1", b"c", b"b3"):
        table.put(key, key.upper())
    db.table("t2").put(b"b0", b"other table")
    assert [k for k, _ in table.items()] == [b"a1", b"b1", b"b2", b"b3", b"c"]
    assert list(table.items(b"b")) == [(b"b1", b"B1"), (b"b2", b"B2"), (b"b3", b"B3")]
    assert [k for k, _ in table.items(b"b", reverse=True)] == [b"b3", b"b2", b"b1"]
    assert list(table.items(b"x")) == []


def test_batch_is_invisible_until_written_then_applies_every_operation(db):
    a, b = db.table("a"), db.table("b")
    a.put(b"old", b"1")
    batch = db.batch()
    batch.put(a, b"k", b"v")
    batch.put(b, b"k", b"w")
    batch.delete(a, b"old")
    assert len(batch) == 3
    assert a.get(b"k") is None and b.get(b"k") is None and a.get(b"old") == b"1"
    db.write(batch)
    assert a.get(b"k") == b"v" and b.get(b"k") == b"w" and a.get(b"old") is None


def test_a_failed_batch_write_leaves_nothing(tmp_path):
    with Database(tmp_path / "db") as database:
        table = database.table("t")
        batch = database.batch()
        for i in range(100):
            batch.put(table, b"%03d" % i, b"v")
        batch.put(table, b"bad", "not bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            database.write(batch)
        assert list(table.items()) == []
    with Database(tmp_path / "db") as database:
        assert list(database.table("t").items()) == []


def test_batches_and_tables_of_another_database_are_refused(tmp_path):
    with Database(tmp_path / "one") as one, Database(tmp_path / "two") as two:
        with pytest.raises(ValueError, match="another database"):
            one.batch().put(two.table("t"), b"k", b"v")
        batch = two.batch()
        batch.put(two.table("t"), b"k", b"v")
        with pytest.raises(ValueError, match="another database"):
            one.write(batch)
        assert one.table("t").get(b"k") is None


def test_snapshot_keeps_the_view_it_was_taken_at(db):
    table = db.table("t")
    table.put(b"a", b"1")
    table.put(b"b", b"2")
    with db.snapshot() as snapshot:
        frozen = snapshot.table("t")
        table.put(b"a", b"changed")
        table.delete(b"b")
        table.put(b"c", b"3")
        assert frozen.get(b"a") == b"1" and b"b" in frozen and b"c" not in frozen
        assert list(frozen.items()) == [(b"a", b"1"), (b"b", b"2")]
        assert list(frozen.items(b"b", reverse=True)) == [(b"b", b"2")]
    assert list(table.items()) == [(b"a", b"changed"), (b"c", b"3")]


def test_reopening_a_closed_database_keeps_everything(tmp_path):
    with Database(tmp_path / "db") as database:
        database.table("t").put(b"single", b"1")
        batch = database.batch()
        batch.put(database.table("u"), b"batched", b"2")
        database.write(batch)
    with Database(tmp_path / "db") as database:
        assert database.table("t").get(b"single") == b"1"
        assert list(database.table("u").items()) == [(b"batched", b"2")]


_keys = st.binary(max_size=3).map(lambda b: b.replace(b"\x01", b"\xff"))


@settings(max_examples=60, deadline=None)
@given(st.sets(_keys, max_size=8), _keys, st.booleans())
def test_prefix_scans_match_a_model_both_ways_live_and_in_snapshots(tmp_path_factory, keys,
                                                                    prefix, reverse):
    with Database(tmp_path_factory.mktemp("db")) as database:
        for name in ("s", "t", "u"):
            for key in keys:
                database.table(name).put(key, name.encode() + key, sync=False)
        expected = sorted(((k, b"t" + k) for k in keys if k.startswith(prefix)),
                          reverse=reverse)
        assert list(database.table("t").items(prefix, reverse)) == expected
        with database.snapshot() as snapshot:
            assert list(snapshot.table("t").items(prefix, reverse)) == expected
