"""The record logic's hashing: what the split, the shards and the augmentations rest on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shardflow.pipelines.records import assign_split, content_hash


def _table() -> pa.Table:
    return pa.table({
        "id": ["a1b2c3d4", "e5f6a7b8", None, "a1b2c3d4", "0000ffff"],  # one width: the fast path
        "text": ["", "x", None, "", "a longer value " * 9],  # mixed widths, beyond 64 bytes
        "blob": pa.array([b"\x00", b"", None, b"\x00", b"\x00\x00"], pa.binary()),
        "f32": pa.array([1.5, None, -0.0, 1.5, 0.0], pa.float32()),
        "f64": [np.nan, None, 1e308, np.nan, 5e-324],
        "i64": pa.array([2**63 - 1, None, -(2**63), 2**63 - 1, 0], pa.int64()),
        "flag": [True, False, None, True, False],
        "pixels": [[1, 2], [], None, [1, 2], [0]],
    })


def test_equal_rows_hash_equal_and_distinct_rows_differ() -> None:
    h = content_hash(_table(), _table().column_names, seed=7)
    assert h[0] == h[3]
    assert len({h[0], h[1], h[2], h[4]}) == 4
    assert not np.array_equal(h, content_hash(_table(), _table().column_names, seed=8))


def test_a_rows_hash_does_not_depend_on_its_batch() -> None:
    table = _table()
    whole = content_hash(table, table.column_names, seed=7)
    alone = [content_hash(table.slice(i, 1), table.column_names, seed=7)[0] for i in range(table.num_rows)]
    assert list(whole) == alone
    # string and large_string spell the same values
    large = table.set_column(0, "id", table.column("id").cast(pa.large_string()))
    assert list(content_hash(large, table.column_names, seed=7)) == list(whole)


def test_nulls_are_not_confused_with_zeros_or_empty_values() -> None:
    table = pa.table({"s": ["", None], "f": pa.array([0.0, None], pa.float32()), "i": pa.array([0, None], pa.int64()),
                      "day": pa.array([0, None], pa.date32()), "t32": pa.array([0, None], pa.time32("s")),
                      "t64": pa.array([0, None], pa.time64("us")), "u8": pa.array([0, None], pa.uint8())})
    for column in table.column_names:
        h = content_hash(table, [column], seed=1)
        assert h[0] != h[1], column


def test_split_fractions_hold_on_many_rows() -> None:
    n = 200_000
    table = pa.table({"k": pa.array(np.arange(n).astype(str))})
    which = assign_split(content_hash(table, ["k"], seed=3), {"train": 0.8, "eval": 0.2}, seed=3)
    assert abs((which == 1).mean() - 0.2) < 0.005
