"""VFI data: the papers' datasets (local folders), any frame folder or video, and the embedded sample clips.

Every dataset yields tuples of float32 frames (3, H, W) in [0, 1], inputs first and target last:
triplets ``(frame0, frame1, gt)`` or quintuplets ``(I0, I1, I2, I3, gt)``.
"""

from compresskit_vfi.data.datasets import (
    DATASETS,
    DAVIS90,
    SNUFILM,
    UCF101DVF,
    UCF101QVI,
    BVIDVCQuintuplets,
    DatasetLayoutError,
    FrameFolder,
    FrameTupleDataset,
    MiddleburyOther,
    VideoFrames,
    Vimeo90KSeptuplet,
    Vimeo90KTriplet,
    create_dataset,
    read_image,
    sample_windows,
)
from compresskit_vfi.data.samples import SampleDataMissingError, available_clips, load_clip, sample_dataset
from compresskit_vfi.data.transforms import (
    CenterCrop,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomTemporalReverse,
    to_tensor,
    to_uint8,
    train_transform,
)

__all__ = [
    "DATASETS", "DAVIS90", "SNUFILM", "BVIDVCQuintuplets", "DatasetLayoutError", "FrameFolder",
    "FrameTupleDataset", "MiddleburyOther", "UCF101DVF", "UCF101QVI", "VideoFrames", "Vimeo90KSeptuplet",
    "Vimeo90KTriplet", "create_dataset", "read_image", "sample_windows", "SampleDataMissingError",
    "available_clips", "load_clip", "sample_dataset", "CenterCrop", "Compose", "RandomCrop", "RandomFlip",
    "RandomTemporalReverse", "to_tensor", "to_uint8", "train_transform",
]
