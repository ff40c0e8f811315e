"""Image augmentation of training batches: random translations and left-right mirroring.

Every time a training image is in a batch it gets its own random transform (``augment_flip``,
``augment_shift`` s):

- mirrored left-right with probability 1/2: f(i, j) = x(i, W - 1 - j);
- then translated by (dy, dx), each uniform on the integers -s..s:
  out(i, j) = f(i - dy, j - dx), with blank pixels (raw value 0) shifted in from outside.

The transform acts on the raw image. The dataset's normalization z = (x - offset) / scale
(fitted on the unaugmented training split, per feature or over all of them) is undone before it
and applied again after it, so an augmented row is exactly the normalized row of the augmented
raw image. Validation and test images are never augmented. With both keys off nothing is drawn
and training is bit-identical to a run without this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENT_SEED_OFFSET = 2_000_003  # the augmentation generator's seed is the run's seed + this


class ImageAugmenter:
    """Random flips and shifts of a batch of flattened, normalized images.

    Args:
        shape: (height, width) of each row, row-major.
        shift: the largest translation s in pixels, per axis; 0: none.
        flip: mirror left-right with probability 1/2.
        offset, scale: the normalization z = (x - offset) / scale of the rows (per feature,
            shape (H * W,)); None: the rows are raw.
        generator: the source of the random transforms (saved with checkpoints).

    Example:
        >>> import torch
        >>> aug = ImageAugmenter((2, 3), shift=1, flip=False, generator=torch.Generator().manual_seed(0))
        >>> out = aug(torch.arange(1.0, 7.0).reshape(1, 6))  # [[1, 2, 3], [4, 5, 6]] moved by <= 1 pixel
        >>> out.shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        shape: tuple[int, int],
        shift: int,
        flip: bool,
        *,
        offset: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        generator: torch.Generator,
    ):
        height, width = shape
        if shift < 0 or shift >= min(height, width):
            raise ValueError(f"shift={shift!r}: must be an integer in [0, {min(height, width) - 1}] for "
                             f"{height}x{width} images (smaller than the shorter side)")
        if (offset is None) != (scale is None):
            raise ValueError("offset and scale: give both (a normalized dataset) or neither (raw rows)")
        self.shape, self.shift, self.flip = (height, width), shift, flip
        self.generator = generator
        self.offset, self.scale = offset, scale
        # normalizing again is one fused pass: z = x / scale - offset / scale
        self.inv_scale = None if scale is None else 1.0 / scale
        self.shifted_offset = None if scale is None else -offset * self.inv_scale  # type: ignore[operator]
        s, padded_width = shift, width + 2 * shift
        moves = torch.arange(-s, s + 1)
        # index into the image padded by s blank pixels on every side: always in range
        self.row_part = (torch.arange(height)[None, :] - moves[:, None] + s) * padded_width  # (2s+1, H)
        cols = torch.arange(width)
        sources = [cols] + ([width - 1 - cols] if flip else [])  # unflipped, then mirrored
        self.col_part = torch.cat([src[None, :] - moves[:, None] + s for src in sources])  # (2s+1 or 2(2s+1), W)

    @property
    def transforms(self) -> int:
        """How many distinct transforms a sample can get."""
        return len(self.row_part) * len(self.col_part)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The batch ``x`` (n, H * W) with each row flipped / shifted at random (a new tensor)."""
        n = len(x)
        height, width = self.shape
        s = self.shift
        rows = torch.randint(len(self.row_part), (n,), generator=self.generator)
        cols = torch.randint(len(self.col_part), (n,), generator=self.generator)
        index = (self.row_part.index_select(0, rows)[:, :, None]
                 + self.col_part.index_select(0, cols)[:, None, :]).reshape(n, height * width)
        raw = x if self.scale is None else torch.addcmul(self.offset, x, self.scale)
        padded = F.pad(raw.reshape(n, height, width), (s, s, s, s)).reshape(n, -1) if s else raw
        out = torch.gather(padded, 1, index.to(x.device))
        if self.scale is None:
            return out
        return torch.addcmul(self.shifted_offset, out, self.inv_scale)  # type: ignore[arg-type]

    def to(self, device: torch.device) -> ImageAugmenter:
        """Move the normalization statistics (the index tables stay on the CPU)."""
        for name in ("offset", "scale", "inv_scale", "shifted_offset"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self
