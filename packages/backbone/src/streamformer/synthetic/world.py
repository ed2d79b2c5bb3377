"""Scenes of the synthetic world: sampling timelines and object tracks, rendering frames and masks.

Every action is a linear path between a start and an end state (dx, dy, radius) of one object,
and the actions come in time-reversed pairs (left/right, up/down, appearing/disappearing,
growing/shrinking) sampled symmetrically. A clip of one action played backwards is therefore an
equally likely clip of its partner: single frames carry no information about the class, only
their order does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

DATASET = "Synthetic"
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (60, 190, 80),
    "blue": (60, 110, 235),
    "yellow": (230, 205, 60),
}
ACTIONS = ("moving left", "moving right", "moving up", "moving down", "appearing", "disappearing", "growing", "shrinking")

# Start and end state of the forward actions, (dx, dy, r) in units of (distance, distance, radius)
# around the path's midpoint; y grows downwards, so "moving up" decreases dy.
_FORWARD_PATHS = {
    "moving left": ((0.5, 0.0, 1.0), (-0.5, 0.0, 1.0)),
    "moving up": ((0.0, 0.5, 1.0), (0.0, -0.5, 1.0)),
    "appearing": ((0.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    "growing": ((0.0, 0.0, 0.55), (0.0, 0.0, 1.45)),
}
_BACKWARD = {"moving right": "moving left", "moving down": "moving up", "disappearing": "appearing", "shrinking": "growing"}
REVERSED_ACTION = _BACKWARD | {forward: backward for backward, forward in _BACKWARD.items()}
_STATIC = ((0.0, 0.0, 1.0), (0.0, 0.0, 1.0))

# Referring expressions describe an object by its appearance and what it does (None: no action).
EXPRESSION_VERBS: dict[str | None, str] = {
    "moving left": "moves left",
    "moving right": "moves right",
    "moving up": "moves up",
    "moving down": "moves down",
    "appearing": "appears",
    "disappearing": "disappears",
    "growing": "grows",
    "shrinking": "shrinks",
    None: "stays still",
}

# Pixel tests of each shape, centred at (0, 0) with "radius" r; every shape fits in the box +-r.
_SHAPE_TESTS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda dx, dy, r: dx**2 + dy**2 < r**2,
    "square": lambda dx, dy, r: np.maximum(np.abs(dx), np.abs(dy)) < 0.85 * r,
    "triangle": lambda dx, dy, r: (np.abs(dy) < r) & (2 * np.abs(dx) < dy + r),  # apex up
}

TWO_OBJECTS_PROB = 0.75  # videos with a second object (RVOS needs two)
TWO_ACTIONS_PROB = 0.5  # among those, videos where both objects act
SAME_LOOK_PROB = 0.3  # second object looks like the first: only its motion tells them apart
PLACEMENT_TRIES = 100

_WORD = re.compile(r"\w+|[^\w\s]+")  # how the world's texts split into words (and word-level tokenizers)


def words(texts: Iterable[str]) -> list[str]:
    """The sorted lower-case words and punctuation runs of `texts`: the world's vocabulary."""
    return sorted({w for text in texts for w in _WORD.findall(text.lower())})


@dataclass(frozen=True)
class WorldConfig:
    """Frame size (pixels, square), frame rate and video length of a world."""

    size: int = 64
    fps: int = 8
    num_frames: int = 48

    def __post_init__(self) -> None:
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be even and >= 32, got {self.size}")
        if self.num_frames < 16:
            raise ValueError(f"num_frames must be >= 16 (two actions and background), got {self.num_frames}")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object: its look and its per-frame centre (x, y) and radius (0 = absent), in pixels."""

    shape: str
    colour: str
    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Segment:
    """An action performed by `objects[actor]` over frames [start, end)."""

    action: str
    start: int
    end: int
    actor: int


class Rendering(NamedTuple):
    frames: np.ndarray  # uint8 [T, S, S, 3]
    masks: np.ndarray  # bool [num_objects, T, S, S], the visible pixels of each object


@dataclass(frozen=True, eq=False)
class Scene:
    """A sampled video: background, objects with their tracks, and the action segments in time order."""

    config: WorldConfig
    background: np.ndarray  # uint8 [S, S, 3]
    objects: tuple[SceneObject, ...]
    segments: tuple[Segment, ...]

    def render(self) -> Rendering:
        size, num_frames = self.config.size, self.config.num_frames
        centres = np.arange(size) + 0.5
        frames = np.broadcast_to(self.background, (num_frames, size, size, 3)).copy()
        masks = np.zeros((len(self.objects), num_frames, size, size), dtype=bool)
        for mask, obj in zip(masks, self.objects, strict=True):
            dx = centres[None, None, :] - obj.x[:, None, None]
            dy = centres[None, :, None] - obj.y[:, None, None]
            mask[:] = _SHAPE_TESTS[obj.shape](dx, dy, obj.radius[:, None, None])
            frames[mask] = COLOURS[obj.colour]
        return Rendering(frames, masks)

    def frame_labels(self) -> np.ndarray:
        """Index into ACTIONS of the action happening at each frame, -1 for background."""
        labels = np.full(self.config.num_frames, -1, dtype=np.int64)
        for segment in self.segments:
            labels[segment.start : segment.end] = ACTIONS.index(segment.action)
        return labels

    @property
    def main_segment(self) -> Segment:
        """The longest action: the video's AR class, and what its AR clip is trimmed to."""
        return max(self.segments, key=lambda s: s.end - s.start)

    def seconds(self, frame: int) -> float:
        return round(frame / self.config.fps, 3)

    def action_of(self, index: int) -> str | None:
        """The action object `index` performs (each object acts at most once), None if it stays still."""
        return next((s.action for s in self.segments if s.actor == index), None)

    def caption(self, segment: Segment) -> str:
        return f"a {self.objects[segment.actor].name} {segment.action}"

    def captions(self) -> list[str]:
        """Whole-video captions (retrieval): the actions in order, as "a video of ...", and naming the bystanders."""
        actions = [self.caption(s) for s in self.segments]
        captions = [", then ".join(actions), "a video of " + " and ".join(actions)]
        still = [f"a {obj.name}" for i, obj in enumerate(self.objects) if self.action_of(i) is None]
        if still:
            captions.append(f"{captions[0]} next to {' and '.join(still)}")
        return captions

    def expression(self, index: int) -> str:
        """A referring expression for object `index` by appearance and motion (MeViS style)."""
        return f"the {self.objects[index].name} that {EXPRESSION_VERBS[self.action_of(index)]}"


def action_track(action: str | None, progress: np.ndarray, radius: float, distance: float) -> np.ndarray:
    """Per-frame (dx, dy, r) of an object doing `action` (None: standing still) around its path's midpoint.

    `progress` runs from 0 (start state) to 1 (end state); the backward actions are the forward
    ones with start and end swapped, so `action_track(a, p) == action_track(REVERSED_ACTION[a], 1 - p)`.
    """
    if action in _BACKWARD:
        end, start = _FORWARD_PATHS[_BACKWARD[action]]
    else:
        start, end = _STATIC if action is None else _FORWARD_PATHS[action]
    scale = np.array([distance, distance, radius])
    start, end = np.array(start) * scale, np.array(end) * scale
    return start + np.asarray(progress, dtype=np.float64)[:, None] * (end - start)


def sample_scene(rng: np.random.Generator, config: WorldConfig | None = None) -> Scene:
    """A random scene: one or two objects, one or two non-overlapping action segments, background around them."""
    config = config or WorldConfig()
    background = _sample_background(rng, config)
    two_objects = rng.random() < TWO_OBJECTS_PROB
    num_segments = 2 if two_objects and rng.random() < TWO_ACTIONS_PROB else 1
    windows = _sample_timeline(rng, config.num_frames, num_segments)
    actions = [str(a) for a in rng.choice(ACTIONS, size=num_segments, replace=False)]
    look = _random_look(rng)
    objects = [_sample_object(rng, config, look, actions[0], windows[0])]
    segments = [Segment(actions[0], *windows[0], actor=0)]
    if two_objects:
        look = look if rng.random() < SAME_LOOK_PROB else _random_look(rng)
        action, window = (actions[1], windows[1]) if num_segments == 2 else (None, None)
        for _ in range(PLACEMENT_TRIES):
            candidate = _sample_object(rng, config, look, action, window)
            if not _overlap(objects[0], candidate):
                objects.append(candidate)
                if action is not None:
                    segments.append(Segment(action, *window, actor=1))
                break
    return Scene(config, background, tuple(objects), tuple(sorted(segments, key=lambda s: s.start)))


def _random_look(rng: np.random.Generator) -> tuple[str, str]:
    return SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))]


def _sample_background(rng: np.random.Generator, config: WorldConfig) -> np.ndarray:
    """Dark, tinted, with a mild static noise texture: far from every object colour."""
    tint = rng.uniform(10, 45, size=3)
    noise = rng.normal(0, 4, size=(config.size, config.size, 3))
    return np.clip(tint + noise, 0, 255).astype(np.uint8)


def _sample_timeline(rng: np.random.Generator, num_frames: int, num_segments: int) -> list[tuple[int, int]]:
    """[start, end) frame windows: a main action (35-50% of the video) and maybe a shorter second one
    (20-28%), in random order, with at least one background frame before, between and after.

    The spare background frames are split at uniformly random cut points, so an action may sit
    anywhere in the video. (Dealt out one by one, they would split nearly evenly and put every
    single action in the middle, where a prediction that ignores the video finds it.)"""
    lengths = [int(rng.integers(round(0.35 * num_frames), round(0.5 * num_frames) + 1))]
    if num_segments == 2:
        lengths.append(int(rng.integers(round(0.2 * num_frames), round(0.28 * num_frames) + 1)))
    order = rng.permutation(num_segments)
    spare = num_frames - sum(lengths) - (num_segments + 1)
    cuts = np.sort(rng.integers(0, spare + 1, size=num_segments))
    gaps = 1 + np.diff([0, *cuts, spare])
    windows: dict[int, tuple[int, int]] = {}
    cursor = 0
    for gap, k in zip(gaps[:-1], order, strict=True):  # the last gap is what remains
        start = cursor + int(gap)
        windows[int(k)] = (start, start + lengths[k])
        cursor = start + lengths[k]
    return [windows[k] for k in range(num_segments)]


def _sample_object(
    rng: np.random.Generator, config: WorldConfig, look: tuple[str, str], action: str | None, window: tuple[int, int] | None
) -> SceneObject:
    """An object whose whole track stays inside the frame; it rests at its start/end state outside `window`."""
    size, num_frames = config.size, config.num_frames
    radius = rng.uniform(0.09, 0.13) * size
    distance = rng.uniform(0.3, 0.42) * size
    progress = np.zeros(num_frames)
    if window is not None:
        start, end = window
        # Each frame of the window moves on from the one before it, so a causal model can see the
        # action from its first frame; the first frame after the window repeats the last.
        progress = np.clip((np.arange(num_frames) - start + 1) / (end - start), 0, 1)
    track = action_track(action, progress, radius, distance)
    extent = np.abs(track[:, :2]).max(axis=0) + track[:, 2].max()
    centre = rng.uniform(extent + 1, size - 1 - extent)
    shape, colour = look
    return SceneObject(shape, colour, centre[0] + track[:, 0], centre[1] + track[:, 1], track[:, 2])


def _overlap(a: SceneObject, b: SceneObject, gap: float = 2.0) -> bool:
    """Whether the bounding boxes of two objects come closer than `gap` pixels in any frame."""
    apart_x = np.abs(a.x - b.x) >= a.radius + b.radius + gap
    apart_y = np.abs(a.y - b.y) >= a.radius + b.radius + gap
    return not np.all(apart_x | apart_y)
