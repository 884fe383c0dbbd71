"""A process that publishes a checkpoint and stops at a chosen point until it is killed.

    python -m tests.helpers.checkpoint_crash URL OPTIONS_JSON LOCAL_DIR STEP PHASE MARKER

PHASE ``upload``: the largest file's upload is cut midway (on S3: every part of its multipart
upload sent, the upload never completed; on local disk: half its bytes written).
PHASE ``record``: every file uploaded, the commit record not yet written.
Once there, the process writes MARKER and waits, so the test kills it at exactly that point.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import fsspec.implementations.local
import s3fs.core

import shardflow.storage.checkpoints as checkpoints
from shardflow.storage import CheckpointStore


def _stop_here(marker: str) -> None:
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(60)


def _cut_uploads(marker: str, largest: str) -> None:
    s3fs.core.calculate_chunksize = lambda *args, **kwargs: 5 << 20  # S3's smallest part: a multipart upload
    call_s3 = s3fs.core.S3FileSystem._call_s3

    async def call(self: s3fs.core.S3FileSystem, method: str, *args: object, **kwargs: object) -> object:
        if method == "complete_multipart_upload":
            await asyncio.to_thread(_stop_here, marker)
        return await call_s3(self, method, *args, **kwargs)

    s3fs.core.S3FileSystem._call_s3 = call
    put_file = fsspec.implementations.local.LocalFileSystem.put_file

    def put_local(self: object, lpath: str, rpath: str, **kwargs: object) -> None:
        if os.path.abspath(lpath) != largest:
            return put_file(self, lpath, rpath, **kwargs)
        with open(lpath, "rb") as src, open(rpath, "wb") as dst:
            dst.write(src.read(os.path.getsize(lpath) // 2))
            dst.flush()
            _stop_here(marker)

    fsspec.implementations.local.LocalFileSystem.put_file = put_local


def _hold_record(marker: str) -> None:
    publish_bytes = checkpoints.publish_bytes

    def publish(fs: object, dest: str, data: bytes, **kwargs: object) -> None:
        if "/_checkpoints/c" in dest:
            _stop_here(marker)
        publish_bytes(fs, dest, data, **kwargs)

    checkpoints.publish_bytes = publish


def main(url: str, options: str, local_dir: str, step: str, phase: str, marker: str) -> None:
    files = [os.path.join(d, f) for d, _, names in os.walk(local_dir) for f in names]
    if phase == "upload":
        _cut_uploads(marker, os.path.abspath(max(files, key=os.path.getsize)))
    elif phase == "record":
        _hold_record(marker)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    CheckpointStore(url, storage_options=json.loads(options)).publish(local_dir, int(step))
    raise SystemExit("the upload finished: it was meant to stop first")


if __name__ == "__main__":
    main(*sys.argv[1:])
