from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from ruststash.errors import IntegrityError, StoreError
from ruststash.store import Store

META = {"status": 200, "headers": (("etag", '"x"'),), "stored_at": 1000.0, "lifetime": math.inf}


def test_put_lookup_read_roundtrip(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("crate:k", b"hello", **META)
    assert entry.digest == hashlib.sha256(b"hello").hexdigest()
    found = store.lookup("crate:k")
    assert found == entry and found.etag == '"x"'
    assert store.read(found) == b"hello"
    assert store.blob_path(entry.digest).read_bytes() == b"hello"


def test_identical_bodies_share_one_blob(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    a = store.put("crate:a", b"same", **META)
    b = store.put("crate:b", b"same", **META)
    assert a.digest == b.digest
    assert len(list((tmp_path / "c" / "blobs").rglob("*"))) == 2  # one fan-out directory, one blob


def test_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    with pytest.raises(IntegrityError):
        store.put("crate:k", b"evil", expected_digest="0" * 64, **META)
    assert store.lookup("crate:k") is None
    assert not list((tmp_path / "c" / "blobs").rglob("*"))
    assert not list((tmp_path / "c" / "tmp").iterdir())


def test_entry_whose_blob_vanished_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("crate:k", b"body", **META)
    store.blob_path(entry.digest).unlink()
    assert store.lookup("crate:k") is None


def test_reopen_removes_stray_temp_files_and_keeps_entries(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    store.put("crate:k", b"body", **META)
    writer = store.writer()
    writer.write(b"half a bo")  # a crash here leaves a temp file behind
    writer._file.close()
    store.close()
    reopened = Store(tmp_path / "c")
    assert not list((tmp_path / "c" / "tmp").iterdir())
    entry = reopened.lookup("crate:k")
    assert entry is not None and reopened.read(entry) == b"body"


def test_refresh_updates_time_and_headers(tmp_path: Path) -> None:
    store = Store(tmp_path / "c")
    entry = store.put("index:k", b"body", **{**META, "lifetime": 600.0})
    store.refresh(entry, 2000.0, (("etag", '"y"'),), 300.0)
    found = store.lookup("index:k")
    assert found is not None and found.stored_at == 2000.0 and found.etag == '"y"' and found.lifetime == 300.0


def test_refuses_other_formats_and_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "FORMAT").write_text("ruststash-store 0\n")
    with pytest.raises(StoreError, match="another format"):
        Store(tmp_path / "old")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a ruststash store"):
        Store(tmp_path / "foreign")
