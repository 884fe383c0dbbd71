"""shardflow: shard, augment and stream big training data; train with parameter servers.

Subpackages: :mod:`shardflow.storage` (committed datasets at URLs),
:mod:`shardflow.pipelines` (Beam / Dask data pipelines), :mod:`shardflow.training`
(ParameterServerStrategy jobs). :mod:`shardflow.cli` wires them into the ``shardflow`` command.
"""

__version__ = "0.1.0"
