"""The temporal key/value cache that makes StreamFormer a streaming backbone.

Only the temporal attention looks across frames, so streaming needs, per layer, the keys and
values of that attention for the frames a new frame may attend to: tensors of shape
[B*N, heads, slots, head_dim], with N patches per frame. Spatial attention and the MLPs are
per-frame and keep no state.

The rule for which past frames a frame attends to is the same offline and online
(`temporal_attention_mask`), so streaming reproduces the offline forward exactly:

* no window: frame p attends to every frame 0..p (the cache grows with the stream);
* a window of `max_frames`: frame p attends to the `sink_frames` first frames of the stream and
  to the most recent `max_frames - sink_frames` frames up to p. The cache then holds at most
  `max_frames` frames per layer, in a ring buffer: memory is bounded however long the stream.

Slots in the ring are in arbitrary order; attention does not care about key order as long as
the mask is built from each slot's absolute frame index, which the cache keeps beside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EMPTY = -1  # frame index of a slot that holds nothing yet

# The window the command-line tools and OAD extraction stream under unless told otherwise:
# unbounded, a ViT-B/16 cache holds about 14.5 MB per frame in fp32 (52 GB per hour at 1 fps),
# while 256 frames bound it at 3.7 GB, 16 times the 16-frame clips the model is trained on.
DEFAULT_MAX_FRAMES = 256


def cache_bytes_per_frame(config, dtype: torch.dtype = torch.float32, batch_size: int = 1) -> int:
    """Bytes one frame adds to a cache: keys and values of every patch in every layer."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_patches * config.hidden_size * itemsize * batch_size


def temporal_attention_mask(
    query_frames: Tensor, key_frames: Tensor, max_frames: int | None = None, sink_frames: int = 0
) -> Tensor:
    """Boolean [queries, keys] mask, True where query frame q may attend to key frame k.

    Causal (k <= q), and with a window: k among the last `max_frames - sink_frames` frames up to
    q, or k one of the first `sink_frames` frames. Keys at index -1 (empty slots) never match.
    """
    q = query_frames[:, None]
    k = key_frames[None, :]
    allowed = (k <= q) & (k != _EMPTY)
    if max_frames is not None:
        allowed &= (k > q - (max_frames - sink_frames)) | (k < sink_frames)
    return allowed


def check_window(max_frames: int | None, sink_frames: int) -> None:
    if sink_frames < 0:
        raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
    if max_frames is None:
        if sink_frames:
            raise ValueError("sink_frames needs a window: pass max_frames as well")
        return
    if max_frames <= sink_frames:
        raise ValueError(
            f"max_frames ({max_frames}) must exceed sink_frames ({sink_frames}): a frame must always see itself besides the sinks"
        )


class TemporalKVCache:
    """Per-layer keys and values of the temporal attention for a stream of frames.

    Make one with `StreamFormerVisionModel.new_cache(...)` and pass it to every call of the
    model on the same stream; `reset()` empties it for a new stream. Storage is allocated on the
    first call, in `dtype` on `device` (None: those of that call's keys). Later calls may differ
    (a chunk under bf16 autocast, the next in fp32): their keys and values are converted into the
    storage on write and out of it on read, so the stream goes on.

    A call that fails checks (wrong batch, resolution or frame) changes nothing: the stream can go
    on with a correct call. A call that fails part-way through the blocks (say, out of memory)
    leaves the blocks at different frames; the next call then refuses until `reset()`.

    Args:
        num_layers: number of blocks of the model.
        batch_size: streams processed together; every call must use this batch size.
        max_frames: window length in frames (None: unbounded, every past frame is kept).
        sink_frames: first frames of the stream that stay attendable forever (needs max_frames
            and a cache that starts the stream, `start_frame` 0).
        start_frame: absolute index of the first frame this cache will receive (0 for a new
            stream). Time embeddings and the window follow absolute indices.
        dtype, device: of the stored keys and values (None: those of the first call).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int = 1,
        max_frames: int | None = None,
        sink_frames: int = 0,
        start_frame: int = 0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_window(max_frames, sink_frames)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        if start_frame and sink_frames:
            raise ValueError(
                f"sink_frames are the stream's first frames, which a cache starting at frame {start_frame} never receives"
            )
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.max_frames = max_frames
        self.sink_frames = sink_frames
        self.start_frame = start_frame
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next call starts again at `start_frame` (storage is freed)."""
        self.keys: list[Tensor | None] = [None] * self.num_layers
        self.values: list[Tensor | None] = [None] * self.num_layers
        self.slot_frames: list[Tensor | None] = [None] * self.num_layers  # CPU long, frame index per slot
        self._next_frame = [self.start_frame] * self.num_layers

    @property
    def next_frame(self) -> int:
        """Absolute index the next frame given to the model will get."""
        if len(set(self._next_frame)) > 1:
            behind = self._next_frame.index(min(self._next_frame))
            raise RuntimeError(
                f"the cache's blocks disagree on the stream position (block 0 at frame {self._next_frame[0]}, "
                f"block {behind} at frame {self._next_frame[behind]}): a call failed part-way; call cache.reset() "
                "and stream again from the start"
            )
        return self._next_frame[0]

    @property
    def windowed(self) -> bool:
        return self.max_frames is not None

    def nbytes(self) -> int:
        """Bytes held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def cached_frames(self, layer: int = 0) -> int:
        """Number of frames whose keys/values `layer` currently holds."""
        slots = self.slot_frames[layer]
        return 0 if slots is None else int((slots != _EMPTY).sum())

    def update(self, layer: int, key: Tensor, value: Tensor, frames: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Store a chunk's keys/values and return what its queries attend to.

        Args:
            layer: block index.
            key, value: [B*N, heads, t, head_dim] of the chunk's t new frames.
            frames: [t] absolute frame indices of those frames (CPU, consecutive).

        Returns:
            keys, values [B*N, heads, slots, head_dim] and the boolean [t, slots] mask to use
            with them (None when every query may attend to every key).
        """
        t = key.shape[2]
        first = int(frames[0])
        if first != self._next_frame[layer]:
            raise RuntimeError(
                f"cache layer {layer} expected frame {self._next_frame[layer]} next but got frame {first}: "
                "every block must see every chunk of the stream, in order"
            )
        if self.keys[layer] is None:
            if key.shape[0] % self.batch_size:
                raise ValueError(f"cache built for batch size {self.batch_size} got {key.shape[0]} token rows")
            self._allocate(layer, key, t)
        elif key.shape[:2] + key.shape[3:] != self.keys[layer].shape[:2] + self.keys[layer].shape[3:]:
            raise ValueError(
                f"cache was built for {self.keys[layer].shape[0]} token rows (batch {self.batch_size}) "
                f"but got {key.shape[0]}: the batch size and resolution must stay fixed during a stream"
            )
        # Everything is checked: from here on the state changes.
        stored_key, stored_value = self._to_storage(layer, key), self._to_storage(layer, value)
        if self.windowed and t > 1:
            # Earlier queries of the chunk may need frames that writing the chunk would evict:
            # attend over the old slots and the new frames side by side, then store.
            keys = torch.cat([self.keys[layer], stored_key], dim=2)
            values = torch.cat([self.values[layer], stored_value], dim=2)
            key_frames = torch.cat([self.slot_frames[layer], frames])
            self._write(layer, stored_key, stored_value, frames)
        else:
            # One new frame (or no window): writing it evicts nothing it still needs.
            self._write(layer, stored_key, stored_value, frames)
            used = self.max_frames if self.windowed else first + t - self.start_frame
            keys = self.keys[layer][:, :, :used]
            values = self.values[layer][:, :, :used]
            key_frames = self.slot_frames[layer][:used]
        self._next_frame[layer] = first + t
        mask = temporal_attention_mask(frames, key_frames, self.max_frames, self.sink_frames)
        keys, values = keys.to(key.device, key.dtype), values.to(key.device, key.dtype)  # no copy when they match
        return keys, values, None if bool(mask.all()) else mask.to(key.device, non_blocking=True)

    def _to_storage(self, layer: int, x: Tensor) -> Tensor:
        store = self.keys[layer]
        return x.to(store.device, store.dtype)

    def _allocate(self, layer: int, key: Tensor, t: int) -> None:
        rows, heads, _, head_dim = key.shape
        slots = self.max_frames if self.windowed else max(16, t)
        storage = {"dtype": self.dtype or key.dtype, "device": self.device or key.device}
        self.keys[layer] = torch.zeros(rows, heads, slots, head_dim, **storage)
        self.values[layer] = torch.zeros(rows, heads, slots, head_dim, **storage)
        self.slot_frames[layer] = torch.full((slots,), _EMPTY, dtype=torch.long)

    def _slots(self, frames: Tensor) -> Tensor:
        if not self.windowed:
            return frames - self.start_frame
        recent = self.max_frames - self.sink_frames
        return torch.where(frames < self.sink_frames, frames, self.sink_frames + (frames - self.sink_frames) % recent)

    def _write(self, layer: int, key: Tensor, value: Tensor, frames: Tensor) -> None:
        if self.windowed:
            # Only the sinks and the last `recent` frames of the chunk survive; writing just those
            # keeps each slot written once (index_copy_ with repeated indices is undefined).
            recent = self.max_frames - self.sink_frames
            keep = (frames < self.sink_frames) | (frames > frames[-1] - recent)
            if not keep.all():
                key, value, frames = key[:, :, keep], value[:, :, keep], frames[keep]
        else:
            self._grow(layer, int(frames[-1]) - self.start_frame + 1)
        slots = self._slots(frames)
        first = int(slots[0])
        if bool((slots == torch.arange(first, first + len(slots))).all()):  # one run of slots: a slice copy
            self.keys[layer][:, :, first : first + len(slots)].copy_(key)
            self.values[layer][:, :, first : first + len(slots)].copy_(value)
        else:  # the run wraps around the ring
            device_slots = slots.to(key.device, non_blocking=True)
            self.keys[layer].index_copy_(2, device_slots, key)
            self.values[layer].index_copy_(2, device_slots, value)
        self.slot_frames[layer][slots] = frames

    def _grow(self, layer: int, needed: int) -> None:
        capacity = self.keys[layer].shape[2]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity)  # doubling keeps appends amortised O(1)
        for store in (self.keys, self.values):
            old = store[layer]
            grown = old.new_zeros(*old.shape[:2], new_capacity, old.shape[3])
            grown[:, :, :capacity] = old
            store[layer] = grown
        frames = torch.full((new_capacity,), _EMPTY, dtype=torch.long)
        frames[:capacity] = self.slot_frames[layer]
        self.slot_frames[layer] = frames
