"""shardflow.training: ParameterServerStrategy jobs over committed datasets (issue 4)."""
