"""shardflow.pipelines: data generation and Beam / Dask pipelines that write committed datasets."""
