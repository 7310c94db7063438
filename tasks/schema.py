"""The explicit Parquet schema of preprocessed shards (a contract: readers check the version).

Version 3 (this one) drops `mask_segmented` (the paper's k-means segmentation, superseded by
`mask_found`, the default segmenter's mask: no work done twice) and adds `generic_warped` and
`generic_valid`: the generic reference (the average
face of `tasks.generic`) warped onto the same face the same way, colour-matched, and where it
covers the face. Training gives it to a share of rows in place of their own reference, so one
model serves photos with and without a second photo of the person (inference warps the same
average face through the same function when a photo has no reference).

Version 2 added what inference sees of each face, so training meets the same geometry:
`landmarks_masked` (FaceMesh on the masked face, x, y, depth), `mask_found` (the default
segmenter's mask there), `landmarks_predicted` (the landmarks the reference was warped onto:
visible ones FaceMesh's, hidden ones from the fitted reference, `tasks.geometry`) and
`reference_landmarks` (the reference's own, with depth, in the reference crop's pixels).
`reference_warped*` and `reference_valid` are made from these by `tasks.reference.warp_onto_face`,
the function `unmask folder` uses. Older shards (version 1: warped onto the bare face's landmarks;
version 2: no generic reference) are refused: preprocess again.
"""
import pyarrow as pa

SCHEMA_VERSION = "3"
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
        pa.field("mask_found", pa.binary(), nullable=False),
        pa.field("reference_valid", pa.binary(), nullable=False),
        pa.field("generic_warped", pa.binary(), nullable=False),
        pa.field("generic_valid", pa.binary(), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 2 * N_LANDMARKS), nullable=False),
        pa.field("landmarks_masked", pa.list_(pa.float32(), 3 * N_LANDMARKS), nullable=False),
        pa.field("landmarks_predicted", pa.list_(pa.float32(), 3 * N_LANDMARKS), nullable=False),
        pa.field("reference_landmarks", pa.list_(pa.float32(), 3 * N_LANDMARKS), nullable=False),
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
