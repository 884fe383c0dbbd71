"""Beam's SDK worker for local ``multi_processing`` runs, ending with the pipeline that started it.

Beam starts each worker through ``/bin/sh -c`` from a thread of its own, so no parent-death
signal can be set for it; and a worker whose runner is gone waits up to a minute for its control
channel. Started with ``exec`` (the shell replaces itself), the worker's parent is the pipeline
process, which it watches (:func:`shardflow.children.exit_with_parent`).
"""

import sys

from shardflow.children import exit_with_parent

if __name__ == "__main__":
    exit_with_parent()  # before Beam's imports, which take seconds
    from apache_beam.runners.worker import sdk_worker_main

    from shardflow.pipelines.engines import use_jemalloc

    use_jemalloc()

    sdk_worker_main.main(sys.argv)
