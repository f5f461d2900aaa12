"""Image files to model inputs: find PNG/JPEG/BMP/TIFF/WebP files, decode them, convert them to
the model's mode (greyscale or RGB) and size (`to_model`, also for images given as arrays).

Every conversion an image needed is recorded as `(kind, from, to)`, so a caller can say what was
done once per kind (`conversion_notes`) instead of once per image.
"""
from __future__ import annotations

import collections
import glob
import os
import warnings
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageOps

# What a folder is searched for (any case): the formats Pillow reads that photos and scans use.
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_FILTER = Image.Resampling.LANCZOS
# --resize: how an image of another size or aspect ratio is brought to the model's H x W.
RESIZE = {
    # The FashionMNIST / MNIST recipe: longest side to the model's size, centred on black.
    "pad": (lambda im, size: ImageOps.pad(im, size, _FILTER, color=0),
            "aspect ratio kept, padded with black"),
    "crop": (lambda im, size: ImageOps.fit(im, size, _FILTER), "aspect ratio kept, centre cropped"),
    "stretch": (lambda im, size: im.resize(size, _FILTER), "stretched to the new aspect ratio"),
}
_MODE_NAMES = {"1": "1-bit", "L": "greyscale", "LA": "greyscale+alpha", "P": "palette",
               "PA": "palette+alpha", "I": "32-bit greyscale"}
_NOTES = {  # in the order `load_image` applies them
    "large": "decoded {n} very large image{s} ({sources} pixels; Pillow warns above {to} pixels "
             "of possible decompression bombs, which can exhaust memory)",
    "frames": "scored only the first frame of {n} animated or multi-page image{s} ({sources})",
    "exif": "rotated {n} image{s} upright as their EXIF orientation says",
    "alpha": "flattened {n} image{s} with transparent pixels onto black",
    "mode": "converted {n} image{s} from {sources} to {to}",
    "invert": "inverted {n} image{s} (--invert: x -> 255 - x)",
    "size": "resized {n} image{s} from {sources} to {to} (Lanczos filter, {how})",
}


class ImageFileError(ValueError):
  """A path that names no file, or a file that cannot be decoded as an image."""


class Converted(NamedTuple):
  pixels: np.ndarray  # uint8 [H, W, C], the model's input
  conversions: tuple[tuple[str, str, str], ...]  # (kind, from, to), in the order applied
  border_mean: float  # mean pixel on the image's edge before resizing (0 black .. 255 white)


def examples(files: Sequence[str], n: int = 3) -> str:
  """The first `n` of `files`, comma separated, "..." if there are more: for one-line notes."""
  return ", ".join(files[:n]) + (", ..." if len(files) > n else "")


def mode_name(mode: str) -> str:
  return "16-bit greyscale" if mode.startswith("I;16") else _MODE_NAMES.get(mode, mode)


def find_images(paths: Sequence[str]) -> tuple[list[str], int]:
  """The image files `paths` name, in order without repeats, and how many other files were
  passed over in folders.

  A path is a file (taken whatever its extension), a folder (searched recursively for
  `EXTENSIONS` in any case; hidden files and folders skipped) or a shell-style glob
  (`**` spans folders) whose matches are taken like named files and folders.
  """
  found, seen, passed_over = [], set(), 0

  def add(f: str) -> None:
    if os.path.realpath(f) not in seen:
      seen.add(os.path.realpath(f))
      found.append(os.path.normpath(f))

  for p in paths:
    if os.path.exists(p):
      matches = [p]
    elif glob.has_magic(p):
      matches = sorted(glob.glob(p, recursive=True))
      if not matches:
        raise ImageFileError(f"{p}: no file or folder matches this pattern")
    else:
      raise ImageFileError(f"{p}: no such file or folder")
    for m in matches:
      if not os.path.isdir(m):
        add(m)
        continue
      for root, dirs, files in os.walk(m):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(f for f in files if not f.startswith(".")):
          if f.lower().endswith(EXTENSIONS):
            add(os.path.join(root, f))
          else:
            passed_over += 1
  return found, passed_over


def _to_8bit(img: Image.Image) -> Image.Image:
  """16-bit greyscale scaled to 8 bits (Pillow's convert() would clip everything above 255)."""
  if not img.mode.startswith("I"):
    return img
  return Image.fromarray(np.clip(np.round(np.asarray(img, np.float64) / 257), 0, 255)
                         .astype(np.uint8))


def load_image(path: str, image_shape: Sequence[int], resize: str = "pad",
               invert: bool = False) -> Converted:
  """One image file as the model's input (`image_shape` = (H, W, C), C = 1 or 3).

  Greyscale is ITU-R 601 luma (Pillow's "L"); 16-bit images are scaled to 8 bits; transparent
  pixels become black (the datasets' background); `resize` is a key of `RESIZE`.
  Raises ImageFileError naming the file if it cannot be decoded.
  """
  done = []
  try:
    # Pillow's DecompressionBombWarning becomes one note, not a raw warning per file.
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", Image.DecompressionBombWarning)
      img = Image.open(path)
    with img:
      if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        done.append(("large", f"{img.width}x{img.height}", f"{Image.MAX_IMAGE_PIXELS:,}"))
      if getattr(img, "n_frames", 1) > 1:  # GIF, APNG, WebP, TIFF pages: frame 0 is loaded
        done.append(("frames", f"{img.format}, {img.n_frames} frames", "first frame"))
      img.load()
      orientation = img.getexif().get(0x0112, 1)  # the EXIF Orientation tag; 1 = upright
      if orientation != 1:
        img = ImageOps.exif_transpose(img)
        done.append(("exif", str(orientation), "1"))
      converted = to_model(img, image_shape, resize, invert)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ImageFileError(f"{path}: cannot be decoded as an image ({e})") from None
  return converted._replace(conversions=(*done, *converted.conversions))


def to_model(img: Image.Image, image_shape: Sequence[int], resize: str = "pad",
             invert: bool = False) -> Converted:
  """A decoded image in the model's mode (greyscale or RGB) and size `image_shape` (H, W, C):
  the rule of `load_image`, for image files and arrays alike."""
  h, w, c = image_shape
  target = "L" if c == 1 else "RGB"
  done = []
  source = img.mode
  img = _to_8bit(img)
  if "A" in img.getbands() or "transparency" in img.info:
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] < 255:
      img = Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), rgba)
      done.append(("alpha", "transparent", "black"))
  if source != target:
    done.append(("mode", mode_name(source), mode_name(target)))
  img = img.convert(target)
  if invert:
    img = ImageOps.invert(img)
    done.append(("invert", "x", "255 - x"))
  a = np.asarray(img)
  border_mean = float(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean())
  if img.size != (w, h):
    done.append(("size", f"{img.width}x{img.height}", f"{w}x{h}"))
    img = RESIZE[resize][0](img, (w, h))
  return Converted(np.asarray(img, np.uint8).reshape(h, w, c), tuple(done), border_mean)


def conversion_notes(conversions: Sequence[Sequence[tuple[str, str, str]]],
                     resize: str = "pad") -> list[str]:
  """One line per kind of conversion, with counts: "converted 3 images from RGB to greyscale"."""
  counts = collections.Counter(c for per_image in conversions for c in per_image)
  notes = []
  for kind, template in _NOTES.items():
    by_target = collections.defaultdict(collections.Counter)
    for (k, source, to), n in counts.items():
      if k == kind:
        by_target[to][source] += n
    for to, sources in by_target.items():
      n = sum(sources.values())
      shown = ", ".join(s if len(sources) == 1 else f"{s} ({m})" for s, m in sources.most_common(3))
      notes.append(template.format(n=n, s="" if n == 1 else "s", to=to, how=RESIZE[resize][1],
                                   sources=shown + (", ..." if len(sources) > 3 else "")))
  return notes
