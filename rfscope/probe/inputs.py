"""Probe inputs: random tensors, a saved tensor file, or a folder of images.

Images (png/jpg/jpeg/bmp/gif) are read with PIL (or matplotlib's reader as a
fallback), converted to RGB (grayscale kept as one channel when the model takes
one), scaled to [0, 1], resized to the probe size with antialiased bilinear
interpolation, then normalised with the ImageNet mean/std (0.485, 0.456, 0.406) /
(0.229, 0.224, 0.225) for 3 channels, or mean 0.5 / std 0.5 otherwise.

The ERF streams its inputs batch by batch: :class:`ImageFolder` reads only the
images of the slice asked for, and :func:`load_tensors` memory-maps the file when
it can, so memory is bounded by the batch size, not by the number of samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from rfscope.probe.graph import ProbeError

__all__ = ["random_chunk", "load_tensors", "load_images", "ImageFolder", "IMAGE_SUFFIXES", "NORMALISATION"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NORMALISATION = "ImageNet mean/std for RGB (0.485,0.456,0.406)/(0.229,0.224,0.225), else (x-0.5)/0.5"


def random_chunk(k: int, n: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Chunk ``k`` of the random inputs: ``n`` standard-normal samples, reproducible per chunk.

    Seeding per chunk makes a sample's value independent of which rank draws it.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(k))
    return torch.randn((n, *shape), generator=g)


def load_tensors(path: str | Path, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A ``(N, C, *spatial)`` float tensor from a ``torch.save``d tensor, list of tensors or dict."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"--inputs {str(p)!r} does not exist; give a file written by torch.save")
    try:
        try:  # memory-mapped: batches are read from the file as they run
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (non-zip) format cannot be mapped
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ProbeError(f"cannot read {str(p)!r} with torch.load: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        obj = next((v for v in obj.values() if isinstance(v, torch.Tensor)), None)
    if isinstance(obj, (list, tuple)):
        try:
            obj = torch.stack([torch.as_tensor(t) for t in obj])
        except Exception as e:
            raise ProbeError(f"{str(p)!r} holds tensors of different shapes; save one (N, C, H, W) tensor") from e
    if not isinstance(obj, torch.Tensor):
        raise ProbeError(f"{str(p)!r} holds no tensor; save a (N, C, H, W) tensor with torch.save")
    x = obj if obj.dtype == torch.float32 else obj.float()  # float32 stays mapped, not copied
    if shape is not None and x.dim() == len(shape):
        x = x.unsqueeze(0)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ProbeError(
            f"{str(p)!r} holds a tensor of shape {tuple(x.shape)}, expected (N, {', '.join(map(str, shape))})"
        )
    if x.dim() < 3:
        raise ProbeError(f"{str(p)!r}: expected (N, C, *spatial), got shape {tuple(x.shape)}")
    return x


def _read_image(path: Path) -> torch.Tensor:
    """``(C, H, W)`` float in [0, 1]."""
    try:
        import numpy as np
        from PIL import Image

        with Image.open(path) as raw:
            img = raw.convert("RGB") if raw.mode not in ("L", "RGB") else raw.copy()
            a = np.asarray(img, dtype=np.float32) / 255.0
    except ImportError:
        try:
            import matplotlib.image as mpimg
        except ImportError as e:
            raise ProbeError("reading images needs Pillow or matplotlib: pip install matplotlib") from e
        a = mpimg.imread(str(path)).astype("float32")
        if a.max() > 1.0:
            a = a / 255.0
    t = torch.from_numpy(a)
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    return t[..., :3].permute(2, 0, 1).contiguous()


class ImageFolder:
    """The images of ``directory`` (sorted by name, at most ``limit``), read per slice.

    ``folder[a:b]`` is a normalised ``(b - a, C, H, W)`` tensor of ``shape``
    ``(C, H, W)``; only those images are read, so an ERF over many images holds one
    batch at a time.  The folder, the suffixes and the shape are checked here.
    """

    def __init__(self, directory: str | Path, shape: Sequence[int], limit: int | None = None) -> None:
        d = Path(directory)
        if not d.is_dir():
            raise ProbeError(f"--image-dir {str(d)!r} is not a directory")
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if limit is not None:
            files = files[:limit]
        if not files:
            raise ProbeError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(d)!r}")
        if len(shape) != 3:
            raise ProbeError(f"--image-dir needs a 2-D input shape C,H,W; got {tuple(shape)}")
        self.directory = d
        self.files = files
        self.image_shape = tuple(int(n) for n in shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), *self.image_shape)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, n: int) -> ImageFolder:
        """The first ``n`` images (nothing is read)."""
        out = ImageFolder.__new__(ImageFolder)
        out.directory, out.files, out.image_shape = self.directory, self.files[:n], self.image_shape
        return out

    def __getitem__(self, sl: slice) -> torch.Tensor:
        if not isinstance(sl, slice):
            raise TypeError("index an ImageFolder with a slice")
        return _read_batch(self.files[sl], self.image_shape)


def _read_batch(files: Sequence[Path], shape: Sequence[int]) -> torch.Tensor:
    c, h, w = shape
    out = []
    for f in files:
        try:
            t = _read_image(f)
        except ProbeError:
            raise
        except Exception as e:
            raise ProbeError(f"cannot read image {str(f)!r}: {type(e).__name__}: {e}") from e
        if c == 1 and t.shape[0] == 3:
            t = t.mean(0, keepdim=True)
        elif c == 3 and t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        elif t.shape[0] != c:
            raise ProbeError(f"model takes {c} channels; image {str(f)!r} has {t.shape[0]}")
        t = F.interpolate(t.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        out.append(t)
    x = torch.stack(out) if out else torch.zeros((0, c, h, w))
    if c == 3:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    else:
        mean = torch.full((1, c, 1, 1), 0.5)
        std = torch.full((1, c, 1, 1), 0.5)
    return (x - mean) / std


def load_images(directory: str | Path, shape: Sequence[int], limit: int | None = None) -> torch.Tensor:
    """Images of ``directory`` (sorted by name) as one normalised ``(N, C, H, W)`` tensor of ``shape``.

    Reads every image at once; the ERF streams an :class:`ImageFolder` instead.
    """
    folder = ImageFolder(directory, shape, limit)
    return folder[:]
