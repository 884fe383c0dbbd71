"""A user augmentation loaded by import path in tests: ``tests.helpers.augmentations:double_i1``."""

import pyarrow as pa
import pyarrow.compute as pc


def double_i1(table: pa.Table, *, seed: int) -> pa.Table:
    return table.set_column(table.schema.get_field_index("I1"), "I1", pc.multiply(table.column("I1"), pa.scalar(2.0, pa.float32())))
