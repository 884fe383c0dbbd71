"""Reads every shard of a dataset three times through a shared ShardCache; prints checksums as JSON.

Run as a separate OS process by tests/test_storage.py to check that processes can share a cache.
"""

import hashlib
import json
import random
import sys

from shardflow.storage import ShardCache, open_dataset

url, options, cache_dir, limit, seed = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
dataset = open_dataset(url, storage_options=options)
shards = list(dataset.manifest.shards) * 3
random.Random(seed).shuffle(shards)
checksums = []
with ShardCache(cache_dir, max_bytes=limit, workers=3) as cache:
    for path in cache.iter_local(dataset, shards, ahead=3):
        with open(path, "rb") as f:
            checksums.append("sha256:" + hashlib.sha256(f.read()).hexdigest())
print(json.dumps({"checksums": checksums, "downloads": cache.stats.downloads}))
