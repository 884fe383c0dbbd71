"""Pipelines: one definition run by Beam and Dask, with the same shards, dead letters and augmentation."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardflow.pipelines.config import load_config
from shardflow.pipelines.run import run_pipeline
from shardflow.pipelines.synth import SynthConfig, synthesize
from shardflow.storage import open_dataset, read_parquet

from .conftest import Location, run_cli


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("raw") / "clicks")
    synthesize(url, SynthConfig(rows=30_000, days=3, seed=2, rows_per_shard=4000))
    return url


def run(input_url: str, output: str, progress=None, **settings) -> object:
    return run_pipeline(load_config(None, {"input": input_url, "output": output, "label": "label",
                                           "rows_per_shard": 7000, "seed": 1, **settings}), progress=progress)


class Events:
    """Records progress events as the CLI's progress bar would receive them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, event: str, **counts: int) -> None:
        self.seen.append((event, counts))

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.seen if e == event)


def checksums(url: str, **options) -> list[tuple[str, str, str]]:
    return [(s.split, s.format, s.checksum) for s in open_dataset(url, storage_options=options).manifest.shards]


def test_a_local_beam_run_stays_offline_and_leaves_no_temporary_files(raw, tmp_path, monkeypatch) -> None:
    """Beam's DirectRunner would first fetch its Prism runner from GitHub (and leave temp dirs)."""
    lookups = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost", None):
            lookups.append(host)
            raise OSError(f"tests stay offline: {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    summary = run(raw, str(tmp_path / "out"), engine="beam")
    assert summary.manifest is not None and lookups == []
    assert os.listdir(scratch) == []


def test_beam_and_dask_write_the_same_shards(raw, tmp_path) -> None:
    beam_events, dask_events = Events(), Events()
    beam = run(raw, str(tmp_path / "beam"), engine="beam", formats=["parquet", "tfrecord"], progress=beam_events)
    dask = run(raw, str(tmp_path / "dask"), engine="dask", formats=["parquet", "tfrecord"], progress=dask_events,
               dask_processes=True)  # a LocalCluster of worker processes; the s3 test below runs its threads
    for events in (beam_events, dask_events):  # progress: every input file read, every shard written
        plan = dict(events.seen[0][1])
        assert events.seen[0][0] == "plan" and events.count("file") == plan["files"] == 9
        assert events.count("shard") == plan["shards"]
        assert sum(c.get("rows", 0) for e, c in events.seen if e == "file") == 30_000
    run(raw, str(tmp_path / "multi"), engine="beam", formats=["parquet", "tfrecord"],
                direct_running_mode="multi_processing", direct_num_workers=2)
    run(raw, str(tmp_path / "one"), engine="beam", formats=["parquet", "tfrecord"],
                direct_running_mode="in_memory", direct_num_workers=1)
    assert checksums(str(tmp_path / "beam")) == checksums(str(tmp_path / "dask")) == checksums(str(tmp_path / "multi"))
    assert checksums(str(tmp_path / "one")) == checksums(str(tmp_path / "beam"))
    manifest = beam.manifest
    assert beam.rows_read == dask.rows_read == 30_000 and beam.bad_rows == 0
    parquet = [s for s in manifest.shards if s.format == "parquet"]
    rows = {split: sum(s.rows for s in parquet if s.split == split) for split in ("train", "eval")}
    assert rows["train"] + rows["eval"] == 30_000 and abs(rows["eval"] / 30_000 - 0.2) < 0.02
    # Shards are balanced, and each mixes days and classes (rows shuffled across shards).
    train = [s for s in parquet if s.split == "train"]
    assert len(train) == math.ceil(24_000 / 7000) and max(s.rows for s in train) < 1.2 * min(s.rows for s in train)
    dataset = open_dataset(str(tmp_path / "beam"))
    for shard in train:
        with dataset.open_shard(shard) as f:
            labels = pq.read_table(f).column("label").to_numpy()
        assert 0.15 < labels.mean() < 0.35
    # Rows are shuffled, not copied in input order.
    source_c1 = read_parquet(open_dataset(raw)).column("C1").to_pylist()
    first = read_parquet(dataset, "train").column("C1").to_pylist()[:50]
    assert first != [c for c in source_c1 if c in set(first)][:50]
    assert manifest.writer["params"]["engine"] == "beam" and "storage_options" not in manifest.writer["params"]


def test_rerun_is_idempotent_and_deterministic(raw, tmp_path) -> None:
    first = run(raw, str(tmp_path / "out"))
    again = run(raw, str(tmp_path / "out"))
    assert again.manifest.version == first.manifest.version == 1
    other_seed = run(raw, str(tmp_path / "seeded"), seed=2)
    assert checksums(str(tmp_path / "seeded")) != checksums(str(tmp_path / "out"))
    assert other_seed.manifest.rows == first.manifest.rows


def test_parquet_shards_keep_statistics_for_numbers_only(raw, tmp_path) -> None:
    """Min/max of hex ids prune nothing and cost a quarter of the write; numbers and labels keep theirs."""
    run(raw, str(tmp_path / "out"), engine="dask")
    dataset = open_dataset(str(tmp_path / "out"))
    with dataset.open_shard(dataset.manifest.shards[0]) as f:
        group = pq.ParquetFile(f).metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).statistics for i in range(group.num_columns)}
    assert stats["label"].has_min_max and stats["I1"].has_min_max
    assert all(stats[f"C{i}"] is None or not stats[f"C{i}"].has_min_max for i in range(1, 27))


def test_a_dataset_in_two_formats_is_read_once(raw, tmp_path) -> None:
    both = run_pipeline(load_config(None, {"input": raw, "output": str(tmp_path / "both"), "label": "label",
                                           "formats": ["parquet", "tfrecord"]}))
    again = run_pipeline(load_config(None, {"input": str(tmp_path / "both"), "output": str(tmp_path / "again"),
                                            "label": "label"}))
    assert again.rows_read == both.rows_read  # the Parquet shards only: TFRecord holds the same rows
    only_tfrecord = run_pipeline(load_config(None, {"input": raw, "output": str(tmp_path / "tfr"), "label": "label",
                                                    "formats": ["tfrecord"]}))
    assert only_tfrecord.manifest is not None
    with pytest.raises(ValueError, match=r"holds \['tfrecord'\] shards"):
        run_pipeline(load_config(None, {"input": str(tmp_path / "tfr"), "output": str(tmp_path / "x")}))


def test_s3_output_on_the_test_server(raw, s3_server) -> None:
    url = f"s3://{s3_server.bucket}/pipeline-out"
    summary = run(raw, url, engine="dask", storage_options=s3_server.storage_options)
    dataset = open_dataset(url, storage_options=s3_server.storage_options)
    assert dataset.verify() == [] and dataset.manifest == summary.manifest
    assert read_parquet(dataset).num_rows == 30_000
    assert "secret" not in json.dumps(dataset.manifest.writer["params"])


def write_csv(path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_bad_rows_go_to_the_dead_letter_output(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "a.csv", "id,x,label\n1,0.5,1\n2,abc,0\n3,1.5,\n4,2.5,1,extra\n5,3.5,0\n")
    write_csv(raw / "b.csv", "id,x,label\n6,4.5,1\n7,5.5,0\n")
    settings = {"columns": {"id": "int64", "x": "float64", "label": "int64"}, "split": {"train": 1.0, "eval": 0.0}}
    with pytest.raises(ValueError, match=r"3 of 7 rows are bad .* above `max_bad_fraction` 0.1"):
        run(str(raw), str(tmp_path / "strict"), max_bad_fraction=0.1, **settings)
    with pytest.raises(FileNotFoundError):
        open_dataset(str(tmp_path / "strict"))  # nothing committed
    summary = run(str(raw), str(tmp_path / "out"), max_bad_fraction=0.5, **settings)
    assert summary.bad_rows == 3 and summary.manifest.rows == 4
    assert summary.manifest.metadata["pipeline"]["bad_rows"] == 3
    dead = read_parquet(open_dataset(str(tmp_path / "out" / "_dead_letter"))).to_pylist()
    reasons = {row["raw"].split(",")[0] if "," in row["raw"] else row["raw"]: row["reason"] for row in dead}
    assert len(dead) == 3 and all(row["source"].endswith("a.csv") for row in dead)
    assert any("'x'" in r and "abc" in r for r in reasons.values())
    assert any("'label'" in r and "missing" in r for r in reasons.values())
    assert any("expected 3 fields, found 4" in r for r in reasons.values())
    assert sorted(read_parquet(open_dataset(str(tmp_path / "out"))).column("id").to_pylist()) == [1, 5, 6, 7]


def test_one_bad_row_fails_the_run_unless_allowed(tmp_path) -> None:
    """``max_bad_fraction`` is 0 unless configured: a single bad row stops the run, naming why and
    where the bad rows went, and commits nothing but the dead letters."""
    from .helpers import error_line

    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "a.csv", "id,x,label\n1,0.5,1\n2,1.5,0\n")  # the types are inferred from this file
    write_csv(raw / "b.csv", "id,x,label\n3,abc,1\n4,3.5,0\n")
    out = tmp_path / "out"
    config = load_config(None, {"input": str(raw), "output": str(out)})
    assert config.max_bad_fraction == 0
    with pytest.raises(ValueError, match=r"^1 of 4 rows are bad \(25\.00%\), above `max_bad_fraction` 0; nothing "
                                         r"committed\. Reasons: column 'x' \(1\)\. The rows and reasons are in .*_dead_letter\.$"):
        run_pipeline(config)
    with pytest.raises(FileNotFoundError):
        open_dataset(str(out))
    dead = read_parquet(open_dataset(str(out / "_dead_letter"))).to_pylist()
    assert len(dead) == 1 and json.loads(dead[0]["raw"])["x"] == "abc" and dead[0]["source"].endswith("b.csv")
    proc = run_cli("pipeline", "run", "--input", str(raw), "--output", str(tmp_path / "cli"), check=False)
    error_line(proc, "1 of 4 rows are bad", "`max_bad_fraction` 0", str(tmp_path / "cli" / "_dead_letter"))
    allowed = run_pipeline(load_config(None, {"input": str(raw), "output": str(out), "max_bad_fraction": 0.25}))
    assert allowed.bad_rows == 1 and allowed.manifest.rows == 3


def test_empty_input_commits_an_empty_dataset(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "empty.csv", "id,x,label\n")
    summary = run(str(raw), str(tmp_path / "out"), columns={"id": "int64", "x": "float64", "label": "int64"},
                  engine="dask")
    assert summary.manifest.rows == 0 and summary.manifest.shards == ()
    assert open_dataset(str(tmp_path / "out")).schema.names == ["id", "x", "label"]


def test_values_round_trip_exactly_in_parquet_duckdb_and_tfrecord(tmp_path) -> None:
    rows = [
        {"id": 1, "text": "naïve café ☕ 日本語", "x": float("nan"), "big": 2**62, "label": 1},
        {"id": 2, "text": None, "x": 1.7976931348623157e308, "big": -(2**63), "label": 0},
        {"id": 3, "text": "", "x": -0.0, "big": None, "label": 1},
        {"id": 4, "text": "emoji 🚀\nnewline", "x": 5e-324, "big": 0, "label": 0},
    ]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.int64()), ("text", pa.string()),
                                                         ("x", pa.float64()), ("big", pa.int64()),
                                                         ("label", pa.int64())]))
    pq.write_table(table, tmp_path / "in.parquet")
    out = str(tmp_path / "out")
    run(str(tmp_path / "in.parquet"), out, formats=["parquet", "tfrecord"], split={"train": 1.0, "eval": 0.0})
    dataset = open_dataset(out)
    got = read_parquet(dataset).sort_by("id")
    assert got.drop_columns(["x"]).equals(table.drop_columns(["x"]))  # unicode, nulls, extreme ints
    bits = lambda t: t.column("x").to_numpy().view(np.uint64).tolist()  # noqa: E731
    assert bits(got) == bits(table)  # NaN, -0.0, max and subnormal doubles, bit for bit
    import duckdb

    shard = next(s for s in dataset.manifest.shards if s.format == "parquet")
    duck = duckdb.sql(f"SELECT id, text, big FROM read_parquet('{dataset.shard_path(shard)}') ORDER BY id").fetchall()
    assert duck == [(r["id"], r["text"], r["big"]) for r in rows]
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], {"int64": tf.int64, "float32": tf.float32, "string": tf.string}[f["dtype"]],
                                        default_value=f["default"])
            for name, f in dataset.manifest.feature_spec.items()}
    tf_shard = next(s for s in dataset.manifest.shards if s.format == "tfrecord")
    from shardflow.storage.tfrecord import read_tfrecords

    with dataset.open_shard(tf_shard) as f:  # storage's own reader checks both CRCs of every record
        assert sum(1 for _ in read_tfrecords(f, where=tf_shard.path)) == tf_shard.rows == 4
    batch = next(iter(tf.data.TFRecordDataset(dataset.shard_path(tf_shard)).batch(10)))
    parsed = tf.io.parse_example(batch, spec)
    order = np.argsort(parsed["id"].numpy())
    assert parsed["id"].numpy()[order].tolist() == [1, 2, 3, 4]
    assert [t.decode() for t in parsed["text"].numpy()[order]] == ["naïve café ☕ 日本語", "", "", "emoji 🚀\nnewline"]
    assert parsed["big"].numpy()[order].tolist() == [2**62, -(2**63), 0, 0]  # null -> the spec's default
    x = parsed["x"].numpy()[order]
    assert math.isnan(x[0]) and x[3] == np.float32(5e-324) and np.isinf(x[1])  # float32 in TF examples


AUGMENT_ROWS = 2000


@pytest.fixture(scope="module")
def augment_input(tmp_path_factory) -> tuple[str, dict[int, dict]]:
    """A Parquet file of rows with an ``id`` to match each augmented copy with its original."""
    rng = np.random.default_rng(0)
    n = AUGMENT_ROWS
    table = pa.table({
        "id": pa.array(np.arange(n), pa.int64()),
        "I1": pa.array(rng.normal(0, 3, n).astype(np.float32), mask=np.arange(n) % 10 == 3),  # nulls stay nulls
        "y": pa.array(rng.uniform(-1, 1, n)),
        "c": pa.array([f"c{i % 17}" for i in range(n)]),
        "label": pa.array((np.arange(n) % 4 == 0).astype(np.int64)),
    })
    path = tmp_path_factory.mktemp("augment") / "rows.parquet"
    pq.write_table(table, path)
    return str(path), {row["id"]: row for row in table.to_pylist()}


def augmented(source: str, rows: dict[int, dict], out: str, **settings) -> dict[int, list[dict]]:
    """Run a pipeline with 2 augmented copies; check what every effect must leave alone:
    eval rows are the input rows, untouched and never copied; each training row is there once as
    its untouched original and once per copy. Returns the copies of each training row, by id."""
    run(source, out, **{**settings, "augment": {"copies": 2, **settings.get("augment", {})}})
    dataset = open_dataset(out)
    train, evaluation = read_parquet(dataset, "train").to_pylist(), read_parquet(dataset, "eval").to_pylist()
    assert evaluation and all(row == {**rows[row["id"]], "augment_copy": 0} for row in evaluation)
    copies: dict[int, list[dict]] = {}
    for row in sorted(train, key=lambda r: (r["id"], r["augment_copy"])):
        copies.setdefault(row["id"], []).append(row)
    eval_ids = {row["id"] for row in evaluation}
    assert not eval_ids & set(copies) and len(eval_ids) + len(copies) == len(rows)
    for i, (original, *made) in copies.items():
        assert original == {**rows[i], "augment_copy": 0}
        assert [row["augment_copy"] for row in made] == [1, 2]
    return {i: made for i, (_, *made) in copies.items()}


def test_tabular_augmentation_is_seeded_and_only_for_training_rows(augment_input, tmp_path) -> None:
    source, rows = augment_input

    # User functions alone: each copy is its original with I1 doubled, nothing else changed.
    copies = augmented(source, rows, str(tmp_path / "functions"),
                          augment={"functions": ["tests.helpers.augmentations:double_i1"]})
    for i, made in copies.items():
        for row in made:
            assert row == {**rows[i], "I1": None if rows[i]["I1"] is None else 2 * rows[i]["I1"],
                           "augment_copy": row["augment_copy"]}

    # Noise alone: every float feature of every copy moved by N(0, 0.5); ids, strings, labels kept.
    noise = {"augment": {"noise_std": 0.5}}
    noisy = augmented(source, rows, str(tmp_path / "noise"), **noise)
    moved: dict[str, list[float]] = {"I1": [], "y": []}
    for i, made in noisy.items():
        for row in made:
            assert {k: row[k] for k in ("id", "c", "label")} == {k: rows[i][k] for k in ("id", "c", "label")}
            for column, deltas in moved.items():
                assert (row[column] is None) == (rows[i][column] is None)
                if row[column] is not None:
                    deltas.append(row[column] - rows[i][column])
        assert made[0]["y"] != made[1]["y"]  # each copy its own noise
    for column, deltas in moved.items():
        assert len(deltas) > AUGMENT_ROWS and all(d != 0 for d in deltas), column
        assert abs(np.mean(deltas)) < 0.05 and 0.45 < np.std(deltas) < 0.55, (column, np.mean(deltas), np.std(deltas))

    # Masking alone: each chosen column of a copy is its original value or null, about mask_prob of the time.
    copies = augmented(source, rows, str(tmp_path / "mask"), augment={"mask_prob": 0.3, "mask_columns": ["c", "y"]})
    masked = kept = 0
    for i, made in copies.items():
        for row in made:
            assert {k: row[k] for k in ("id", "I1", "label")} == {k: rows[i][k] for k in ("id", "I1", "label")}
            for column in ("c", "y"):
                assert row[column] in (None, rows[i][column])
                masked, kept = masked + (row[column] is None), kept + (row[column] is not None)
    assert 0.25 < masked / (masked + kept) < 0.35

    # Seeded: the other engine writes the same bytes; another seed, other bytes (and other noise).
    augmented(source, rows, str(tmp_path / "noise-dask"), engine="dask", **noise)
    assert checksums(str(tmp_path / "noise-dask")) == checksums(str(tmp_path / "noise"))
    reseeded = augmented(source, rows, str(tmp_path / "noise-seed-2"), seed=2, **noise)
    assert set(checksums(str(tmp_path / "noise-seed-2"))).isdisjoint(checksums(str(tmp_path / "noise")))
    both = set(reseeded) & set(noisy)
    assert both and all(reseeded[i][0]["y"] != noisy[i][0]["y"] for i in both)
    assert open_dataset(str(tmp_path / "noise")).manifest.metadata["pipeline"]["augment"]["noise_std"] == 0.5


def test_image_augmentation(tmp_path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        pixels = rng.integers(0, 255, (8, 6, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        rows.append({"id": i, "png": buffer.getvalue(), "raw": pixels.reshape(-1).tolist(), "label": i % 2})
    schema = pa.schema([("id", pa.int64()), ("png", pa.binary()), ("raw", pa.list_(pa.uint8())), ("label", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "images.parquet")
    augment = {"copies": 1, "image_columns": ["png", "raw"], "image_shape": [8, 6, 3], "flip": True,
               "crop_padding": 2, "brightness": 0.3}
    run(str(tmp_path / "images.parquet"), str(tmp_path / "out"), augment=augment, split={"train": 1.0, "eval": 0.0})
    table = read_parquet(open_dataset(str(tmp_path / "out"))).sort_by([("id", "ascending"), ("augment_copy", "ascending")])
    changed = 0
    for original, copy in zip(table.slice(0).to_pylist()[::2], table.to_pylist()[1::2]):
        assert original["id"] == copy["id"] and copy["augment_copy"] == 1
        image = np.asarray(Image.open(io.BytesIO(copy["png"])))
        assert image.shape == (8, 6, 3) and len(copy["raw"]) == 8 * 6 * 3
        changed += copy["png"] != original["png"]
        assert original["raw"] == rows[original["id"]]["raw"]  # originals untouched
    assert changed >= 35


def test_dataflow_job_builds_offline(raw, tmp_path) -> None:
    proc = run_cli("pipeline", "run", "--input", raw, "--output", str(tmp_path / "df"), "--label", "label",
                   "--runner", "DataflowRunner", "--project", "shardflow-test", "--region", "us-central1",
                   "--temp_location", "gs://shardflow-test/tmp", "--dry_run=True")
    assert "dry run" in proc.stdout
    with pytest.raises(FileNotFoundError):
        open_dataset(str(tmp_path / "df"))


def test_cli_with_yaml_config_and_overrides(raw, tmp_path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"input: {raw}\noutput: {tmp_path / 'from-yaml'}\nlabel: label\nshards: 2\n"
                      "split: {train: 0.9, eval: 0.1}\nformats: [parquet]\n")
    proc = run_cli("pipeline", "run", str(config), "--engine", "dask", "--formats", "parquet,tfrecord", "--seed", "5")
    assert "committed" in proc.stdout and "train" in proc.stdout
    manifest = open_dataset(str(tmp_path / "from-yaml")).manifest
    assert {s.format for s in manifest.shards} == {"parquet", "tfrecord"}
    assert manifest.writer["params"]["seed"] == 5 and manifest.writer["params"]["split"]["eval"] == 0.1
    bad = run_cli("pipeline", "run", str(config), "--split", "train=0.5", check=False)
    assert bad.returncode == 2 and "train + eval + test must be 1" in bad.stderr and "Traceback" not in bad.stderr


def test_jsonl_input(tmp_path) -> None:
    lines = [json.dumps({"id": i, "name": f"n{i}", "label": i % 2}) for i in range(50)] + ["{not json"]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    summary = run(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), max_bad_fraction=0.1)
    assert summary.rows_read == 51 and summary.bad_rows == 1 and summary.manifest.rows == 50


def test_pipeline_output_on_every_backend(raw, location: Location) -> None:
    run(raw, location.url, storage_options=location.storage_options, rows_per_shard=20_000)
    assert open_dataset(location.url, storage_options=location.storage_options).verify() == []


def test_s3_to_s3_with_a_glob_split_key_and_gzip(s3_server, tmp_path) -> None:
    options = s3_server.storage_options
    rows = [{"user": f"u{i % 37}", "x": float(i), "label": i % 2} for i in range(3000)]
    table = pa.Table.from_pylist(rows)
    fs, _ = __import__("shardflow.storage", fromlist=["resolve"]).resolve(f"s3://{s3_server.bucket}", options)
    for part in range(3):
        buffer = io.BytesIO()
        pq.write_table(table.slice(part * 1000, 1000), buffer)
        fs.pipe_file(f"{s3_server.bucket}/glob-in/part-{part}.parquet", buffer.getvalue())
    fs.pipe_file(f"{s3_server.bucket}/glob-in/notes.txt", b"not matched by the glob")
    out = f"s3://{s3_server.bucket}/glob-out"
    summary = run(f"s3://{s3_server.bucket}/glob-in/*.parquet", out, storage_options=options, engine="dask",
                  formats=["parquet", "tfrecord"], tfrecord_gzip=True, split={"train": 0.7, "eval": 0.3, "key": "user"},
                  rows_per_shard=None, bytes_per_shard=20_000)
    assert summary.rows_read == 3000
    dataset = open_dataset(out, storage_options=options)
    train_users = set(read_parquet(dataset, "train").column("user").to_pylist())
    eval_users = set(read_parquet(dataset, "eval").column("user").to_pylist())
    assert train_users and eval_users and not train_users & eval_users  # one key, one split
    assert {s.format for s in dataset.manifest.shards} == {"parquet", "tfrecord.gz"}
    assert len([s for s in dataset.manifest.shards if s.format == "parquet"]) > 2  # sized by bytes
    import tensorflow as tf

    shard = next(s for s in dataset.manifest.shards if s.format == "tfrecord.gz")
    with dataset.open_shard(shard) as f:
        local = tmp_path / "shard.tfrecord.gz"
        local.write_bytes(f.read())
    assert sum(1 for _ in tf.data.TFRecordDataset(str(local), compression_type="GZIP")) == shard.rows


def test_dask_address_joins_an_existing_cluster(raw, tmp_path) -> None:
    from dask.utils import key_split
    from distributed import Client, LocalCluster, get_task_stream

    events = Events()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        with get_task_stream(client) as stream:  # every task this scheduler runs meanwhile, whoever submitted it
            run(raw, str(tmp_path / "joined"), engine="dask", dask_address=cluster.scheduler_address, progress=events)
        assert set(client.scheduler_info()["workers"]) == workers  # the job left the cluster as it found it
    plan = events.seen[0][1]
    ran = [key_split(task["key"]) for task in stream.data]
    # This cluster's one worker ran every task of the job: one per input file, one per shard.
    assert sorted(ran) == sorted(["map_file"] * plan["files"] + ["reduce_shard"] * plan["shards"]), ran
    assert {task["worker"] for task in stream.data} == workers
    run(raw, str(tmp_path / "local"), engine="dask")
    assert checksums(str(tmp_path / "joined")) == checksums(str(tmp_path / "local"))
