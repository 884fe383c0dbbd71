"""shardflow.retrain: bring a model up to date on new raw partitions, promote it only when it
is at least as good as the one serving. Like the CLI, it sits above ``pipelines`` and
``training`` and wires them together; neither of those imports it."""
