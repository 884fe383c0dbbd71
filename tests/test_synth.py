"""Synthetic click data: realistic, reproducible, streaming, with a correct known optimum."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from shardflow.pipelines.synth import CATEGORICAL, CHUNK_ROWS, NUMERIC, SCHEMA, PlantedModel, SynthConfig, synthesize
from shardflow.storage import open_dataset, read_parquet
from shardflow.training.report import auc as exact_auc


def memory_url() -> str:
    return f"memory://synth-tests/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def written() -> tuple[str, object]:
    url = memory_url()
    manifest = synthesize(url, SynthConfig(rows=150_000, days=2, seed=3, rows_per_shard=40_000))
    return url, manifest


def test_schema_partitions_and_realism(written) -> None:
    url, manifest = written
    table = read_parquet(open_dataset(url))
    assert table.schema == SCHEMA and table.num_rows == 150_000
    assert {s.partition["day"] for s in manifest.shards} == {"2026-01-01", "2026-01-02"}
    assert [s.rows for s in manifest.shards] == [40_000, 35_000, 40_000, 35_000]
    label = table.column("label").to_numpy()
    assert set(np.unique(label)) == {0, 1} and 0.2 < label.mean() < 0.3
    nulls = [table.column(c).null_count / table.num_rows for c in NUMERIC]
    assert max(nulls) > 0.3 and min(nulls) == 0.0  # some columns heavily missing, some complete
    for c in NUMERIC:
        values = table.column(c).drop_null().to_numpy()
        assert values.min() >= -1 and np.mean(values) > np.median(values)  # counts, right-skewed
    distinct = [pc.count_distinct(table.column(c)).as_py() for c in CATEGORICAL]
    assert min(distinct) <= 4 and max(distinct) > 20_000  # tiny and high-cardinality columns
    lengths = pc.utf8_length(table.column("C3").drop_null())
    assert pc.all(pc.equal(lengths, 8)).as_py()
    assert any(table.column(c).null_count for c in CATEGORICAL)
    assert pa.types.is_string(table.schema.field("C1").type)


def test_known_optimum_is_realistic_and_correct(written) -> None:
    url, manifest = written
    info = manifest.metadata["synth"]
    assert 0.75 <= info["optimal_auc"] <= 0.85
    # Regenerate the same rows with the planted model and compute the optimum exactly.
    model = PlantedModel.from_seed(3)
    table = read_parquet(open_dataset(url))
    logits, labels, batches = [], [], []
    for date, rows in SynthConfig(rows=150_000, days=2, seed=3).day_rows():
        ordinal = __import__("datetime").date.fromisoformat(date).toordinal()
        for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
            batch, logit = model.batch(np.random.default_rng([3, ordinal, chunk]), min(CHUNK_ROWS, rows - start))
            batches.append(batch)
            logits.append(logit)
            labels.append(batch.column(0).to_numpy())
    assert pa.Table.from_batches(batches).equals(table)  # the logits belong to exactly the rows written
    auc = exact_auc(np.concatenate(labels), np.concatenate(logits))  # independent of synth's histogram
    assert abs(auc - info["optimal_auc_realized"]) < 0.003
    assert abs(info["optimal_auc"] - info["optimal_auc_realized"]) < 0.01
    # No scorer beats the true probability: a strong single feature stays below it.
    best_single = max(exact_auc(table.column("label").to_numpy(),
                                np.nan_to_num(table.column(c).to_numpy(zero_copy_only=False), nan=-2.0)) for c in NUMERIC)
    assert max(best_single, 1 - best_single) < info["optimal_auc"]


def test_same_seed_same_bytes_other_seed_other_data() -> None:
    config = SynthConfig(rows=20_000, days=2, seed=11, rows_per_shard=6000)
    a, b = synthesize(memory_url(), config), synthesize(memory_url(), config)
    assert [s.checksum for s in a.shards] == [s.checksum for s in b.shards]
    c = synthesize(memory_url(), SynthConfig(rows=20_000, days=2, seed=12, rows_per_shard=6000))
    assert not {s.checksum for s in a.shards} & {s.checksum for s in c.shards}


def test_appended_days_match_a_single_run() -> None:
    whole = synthesize(memory_url(), SynthConfig(rows=9000, days=3, seed=5))
    url = memory_url()
    synthesize(url, SynthConfig(rows=6000, days=2, seed=5))
    appended = synthesize(url, SynthConfig(rows=3000, days=1, seed=5, start_date="2026-01-03"), append=True)
    assert appended.version == 2
    assert [s.checksum for s in appended.shards] == [s.checksum for s in whole.shards]
    assert list(appended.metadata["synth"]["days"]) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert appended.metadata["synth"]["optimal_auc"] == pytest.approx(whole.metadata["synth"]["optimal_auc"], abs=1e-4)
    with pytest.raises(ValueError, match="seed"):
        synthesize(url, SynthConfig(rows=100, seed=6, start_date="2026-01-04"), append=True)
    # A day already present is kept, not duplicated, whatever the shard size; other row counts are refused.
    again = synthesize(url, SynthConfig(rows=3000, days=1, seed=5, start_date="2026-01-03", rows_per_shard=300),
                       append=True)
    assert again.rows == 9000 and [s.checksum for s in again.shards] == [s.checksum for s in whole.shards]
    with pytest.raises(ValueError, match="already in"):
        synthesize(url, SynthConfig(rows=500, seed=5, start_date="2026-01-03"), append=True)


@pytest.mark.parametrize(("name", "value"), [("rows", 0), ("days", 0), ("seed", -1), ("start_date", "yesterday"),
                                           ("rows_per_shard", 0)])
def test_bad_config_names_the_argument(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Invalid value for `{name}`: {value!r}"):
        SynthConfig(**{"rows": 10, name: value})


# VmHWM is this process's own peak (ru_maxrss would carry over the parent's peak across exec).
_PEAK = """
import re, sys
from shardflow.pipelines.synth import SynthConfig, synthesize
synthesize(sys.argv[1], SynthConfig(rows=int(sys.argv[2]), rows_per_shard=100_000))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def test_memory_does_not_grow_with_rows(tmp_path) -> None:
    def peak_kib(rows: int) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK, str(tmp_path / f"d{rows}"), str(rows)],
                             capture_output=True, text=True, check=True, timeout=300)
        return json.loads(out.stdout)

    small, large = peak_kib(200_000), peak_kib(1_000_000)
    assert large < small * 1.1 + 10_000, f"peak RSS {small} KiB at 200k rows, {large} KiB at 1M rows"
