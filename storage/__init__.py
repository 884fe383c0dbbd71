"""shardflow.storage: URLs, committed datasets, the shard cache and garbage collection.

``pipelines`` and ``training`` both build on this package; it depends on neither.
"""

from .cache import CacheStats, ShardCache
from .checkpoints import Checkpoint, CheckpointStore
from .dataset import Dataset, DatasetWriter, ShardProblem, open_dataset, publish_shard
from .errors import ChecksumMismatchError, ManifestError, ShardflowError, UnsafePathError
from .gc import GcReport, collect_garbage
from .manifest import Manifest, Shard
from .parquet import iter_parquet_batches, read_parquet, write_parquet_shards
from .schema import feature_spec_from_schema
from .urls import parse_storage_options, redact_url, resolve

__all__ = [
    "CacheStats",
    "Checkpoint",
    "CheckpointStore",
    "ChecksumMismatchError",
    "Dataset",
    "DatasetWriter",
    "GcReport",
    "Manifest",
    "ManifestError",
    "Shard",
    "ShardCache",
    "ShardProblem",
    "ShardflowError",
    "UnsafePathError",
    "collect_garbage",
    "feature_spec_from_schema",
    "iter_parquet_batches",
    "open_dataset",
    "parse_storage_options",
    "publish_shard",
    "read_parquet",
    "redact_url",
    "resolve",
    "write_parquet_shards",
]
