"""The explicit Parquet schema of preprocessed shards (a contract: readers check the version)."""
import pyarrow as pa

SCHEMA_VERSION = "1"
N_LANDMARKS = 478

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("masked", pa.binary(), nullable=False),
        pa.field("reference_warped", pa.binary(), nullable=False),
        pa.field("reference_warped_raw", pa.binary(), nullable=False),
        pa.field("mask_region", pa.binary(), nullable=False),
        pa.field("mask_rendered", pa.binary(), nullable=False),
        pa.field("mask_segmented", pa.binary(), nullable=False),
        pa.field("reference_valid", pa.binary(), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 2 * N_LANDMARKS), nullable=False),
        pa.field("align_matrix", pa.list_(pa.float32(), 6), nullable=False),
        pa.field("faces", pa.int16(), nullable=False),
        pa.field("reference_kind", pa.string(), nullable=False),
    ],
    metadata={"unmask.schema_version": SCHEMA_VERSION},
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

ROW_GROUP_SIZE = 100
PNG_COLUMNS = ("image", "masked", "reference_warped", "reference_warped_raw")
MASK_COLUMNS = ("mask_region", "mask_rendered", "mask_segmented", "reference_valid")
