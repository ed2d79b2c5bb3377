"""The synthetic video world: the embedded default data set every package trains on end to end.

Small (64x64, 8 fps, 6 s) videos of coloured shapes whose actions are only visible over time
(moving left/right/up/down, appearing/disappearing, growing/shrinking), written by
`generate_world(root)` as mp4 files plus annotations in the original formats:

    videos/<video_id>.mp4
    world.json                                  seed, config, vocabulary, split sizes
    ar/{train,val}.csv, ar/label2id.json        `ar/clips/<id>.mp4,<class>` (no header)
    ar/clips/<id>.mp4                           the video's longest action, trimmed (AR clip)
    retrieval/{train,val}.csv                   video_id,dataset,text (text: list literal of captions)
    grounding/{train,val}.csv                   video_id,start_second,end_second,text,relevant_windows,dataset
    localization/{train,val}.csv, label2id.json same columns, one row per (video, class)
    vis/{train,val}_Synthetic.json, label2id.json, JPEGImages/<id>/<frame>.jpg   YouTube-VIS
    rvos/{train,val}_MEVIS.csv, rvos/masks/<anno_id>.json                       MeViS
    oad/target_perframe/<id>.npy, oad/data_info.json                           THUMOS layout, 4 fps
    qa/{train,val}.json                         timed multiple-choice questions

`sample_scene(rng)` gives the same scenes in memory (`scene.render()` -> frames and masks).
`streams.write_streams(root, out)` stitches a split's videos into long streams (minutes to an
hour) with timed questions in OVO-Bench's layout, for streaming video QA.
"""

from ..masks import compressed_rle, uncompressed_rle
from .generate import WorldSummary, generate_world
from .world import (
    ACTIONS,
    COLOURS,
    DATASET,
    REVERSED_ACTION,
    SHAPES,
    Rendering,
    Scene,
    SceneObject,
    Segment,
    WorldConfig,
    action_track,
    sample_scene,
    words,
)
from .writers import OAD_CLASSES, VIS_CATEGORIES, oad_targets, qa_items

__all__ = [
    "ACTIONS",
    "COLOURS",
    "DATASET",
    "OAD_CLASSES",
    "REVERSED_ACTION",
    "SHAPES",
    "VIS_CATEGORIES",
    "Rendering",
    "Scene",
    "SceneObject",
    "Segment",
    "WorldConfig",
    "WorldSummary",
    "action_track",
    "compressed_rle",
    "generate_world",
    "oad_targets",
    "qa_items",
    "sample_scene",
    "uncompressed_rle",
    "words",
]
