"""The shard format: round trips, and every malformed shard or path as a one-line PgolfError."""

from __future__ import annotations

import os
import re
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pgolf.data.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    file_sha256,
    load_tokens,
    read_header,
    read_shard,
    resolve_shards,
    write_bytes_atomic,
    write_shard,
)
from pgolf.errors import PgolfError


def one_line_error(excinfo, path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@settings(max_examples=40, deadline=None)
@given(tokens=arrays(np.uint16, st.integers(0, 3000)))
def test_write_then_read_round_trips(tmp_path_factory, tokens):
    path = tmp_path_factory.mktemp("rt") / "fineweb_val_000000.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * tokens.size
    assert read_header(path) == tokens.size
    np.testing.assert_array_equal(np.asarray(read_shard(path)), tokens)


def test_header_layout_is_the_challenge_one(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.array([1, 7, 65535], dtype=np.int64))
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, 3] and not header[3:].any()
    assert path.read_bytes()[HEADER_BYTES:] == bytes([1, 0, 7, 0, 255, 255])


def write_header(path, magic=SHARD_MAGIC, version=1, num_tokens=4, payload_tokens=4):
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, num_tokens
    path.write_bytes(header.tobytes() + np.arange(payload_tokens, dtype="<u2").tobytes())
    return path


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"magic": 12345}, "bad shard magic 12345"),
        ({"version": 2}, "unsupported shard version 2"),
        ({"num_tokens": 5}, "shard size mismatch"),
        ({"payload_tokens": 3}, "shard size mismatch"),
        ({"num_tokens": -1, "payload_tokens": 0}, "shard size mismatch"),
    ],
)
def test_malformed_shards_are_named(tmp_path, kwargs, problem):
    path = write_header(tmp_path / "bad.bin", **kwargs)
    with pytest.raises(PgolfError) as err:
        read_shard(path)
    assert problem in one_line_error(err, path)


def test_truncated_header(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(PgolfError, match="truncated shard") as err:
        read_header(path)
    one_line_error(err, path)


def test_missing_shard(tmp_path):
    with pytest.raises(PgolfError, match="shard file not found") as err:
        read_shard(tmp_path / "none.bin")
    one_line_error(err, tmp_path / "none.bin")


def test_token_id_at_or_above_vocab_is_named_with_its_position(tmp_path):
    path = tmp_path / "fineweb_val_000000.bin"
    write_shard(path, np.array([1, 5, 1023, 1024, 9], dtype=np.uint16))
    with pytest.raises(PgolfError, match="token id 1024 >= vocab size 1024 \\(first at position 3\\)") as err:
        load_tokens(path, vocab_size=1024)
    one_line_error(err, path)
    assert load_tokens(path, vocab_size=1025).tolist() == [1, 5, 1023, 1024, 9]


def test_resolve_directory_glob_and_file(tmp_path):
    for name in ("fineweb_val_000001.bin", "fineweb_val_000000.bin", "fineweb_train_000000.bin"):
        write_shard(tmp_path / name, np.array([1, 2], dtype=np.uint16))
    assert [p.name for p in resolve_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert [p.name for p in resolve_shards(str(tmp_path / "*train*.bin"))] == ["fineweb_train_000000.bin"]
    assert resolve_shards(tmp_path / "fineweb_val_000001.bin") == [tmp_path / "fineweb_val_000001.bin"]
    assert load_tokens(tmp_path, "val").tolist() == [1, 2, 1, 2]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("empty_dir", "no fineweb_val_*.bin shards"),
        ("*.nothing", "glob matched no files"),
        ("absent.bin", "no such file"),
    ],
)
def test_unresolvable_specs(tmp_path, spec, problem):
    (tmp_path / "empty_dir").mkdir()
    target = str(tmp_path / spec)
    with pytest.raises(PgolfError, match=re.escape(problem)) as err:
        resolve_shards(target)
    one_line_error(err, target)


def test_refuses_ids_beyond_uint16(tmp_path):
    with pytest.raises(PgolfError, match="fit uint16"):
        write_shard(tmp_path / "x.bin", np.array([70000]))
    assert list(tmp_path.iterdir()) == []


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    data = os.urandom(3 << 20) + b"tail"  # spans several read chunks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_write_bytes_atomic_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "sub" / "f.json"
    write_bytes_atomic(path, b"first")
    write_bytes_atomic(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
