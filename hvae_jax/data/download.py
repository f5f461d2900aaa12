"""The official idx files of FashionMNIST and MNIST, fetched into a cache folder on first use.

`data.load_images` calls `fetch` when no local copy is found (no `{name}.npz` and no idx files in
the data dir, the cache or `/usr/share/datasets`), so a fresh clone with internet needs no
setup. Each file is checked against its published SHA-256 and size (those tfds lists for the
same URLs) and written atomically: downloaded to a hidden temporary file beside its final name,
verified, then renamed. A failed, corrupt or interrupted download leaves nothing that a later
run could read as data.

Where files go: `$HVAE_CACHE_DIR`, else `$XDG_CACHE_HOME/hvae_jax`, else `~/.cache/hvae_jax`,
in a folder per data set (`fashion_mnist/`, `mnist/`), the layout `idx.py`'s reader expects.
Decoded image folders are kept there too, in `folders/` (`folder_cache.py`).
Where they come from: the mirrors of `MIRRORS` in order, or only `$HVAE_DATA_MIRROR` when set
(a base URL holding `<name>/<file>`, e.g. a lab's own copy behind a firewall).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, NamedTuple, Optional

CACHE_ENV = "HVAE_CACHE_DIR"
MIRROR_ENV = "HVAE_DATA_MIRROR"
TIMEOUT_S = 30  # per connection attempt and per read; a dead mirror fails over quickly
_CHUNK = 1 << 16


class Remote(NamedTuple):
  file: str  # the official file name, e.g. 't10k-images-idx3-ubyte.gz'
  size: int  # bytes
  sha256: str


# The official image file of each split (the label files beside them are not needed), and its
# size in bytes and SHA-256 per data set.
_SPLIT_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
_CHECKSUMS = {
    ("fashion_mnist", "train"):
        (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    ("fashion_mnist", "test"):
        (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    ("mnist", "train"):
        (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    ("mnist", "test"):
        (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
}
FILES: dict[tuple[str, str], Remote] = {
    (name, split): Remote(_SPLIT_FILES[split], size, sha256)
    for (name, split), (size, sha256) in _CHECKSUMS.items()}

# Base URLs holding the files above, tried in order: the data sets' own hosts first, then the
# copies tfds and torchvision download from.
MIRRORS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    "mnist": (
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
}


# Other ways to get the files, named when the download fails.
SYSTEM_PACKAGES = {"fashion_mnist": ["apt-get install dataset-fashion-mnist (Debian/Ubuntu)"]}


class DownloadError(FileNotFoundError):
  """No mirror delivered an intact copy of a file (a FileNotFoundError: the data is not there)."""


def cache_dir() -> str:
  """The folder downloads go to (see the module docstring)."""
  if os.environ.get(CACHE_ENV):
    return os.path.expanduser(os.environ[CACHE_ENV])
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(xdg, "hvae_jax")


def available(name: str, split: str) -> bool:
  """Whether `fetch` knows a file for this data set and split."""
  return (name, split) in FILES


def mirrors(name: str) -> tuple[str, ...]:
  """Base URLs for `name`'s files: `$HVAE_DATA_MIRROR`/<name>/ alone when set, else `MIRRORS`."""
  base = os.environ.get(MIRROR_ENV)
  if base:
    return (urllib.parse.urljoin(base.rstrip("/") + "/", f"{name}/"),)
  return MIRRORS.get(name, ())


def fetch(name: str, split: str, offline_hint: str = "",
          report: Callable[[str], None] = print) -> str:
  """The path of the verified official idx file of `name`'s `split` in the cache, downloaded
  from the first mirror that delivers an intact copy if it is not there yet.

  Raises:
    DownloadError: every mirror failed (offline, missing, or a wrong size or checksum); one
      line naming each mirror's problem and the ways to provide the file without internet
      (`offline_hint` first).
  """
  remote = FILES[(name, split)]
  folder = os.path.join(cache_dir(), name)
  path = os.path.join(folder, remote.file)
  if os.path.isfile(path):
    return path  # only verified files are ever renamed to this name
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise DownloadError(f"cannot create the cache folder {folder} ({e.strerror or e}); set "
                        f"${CACHE_ENV} to a writable folder") from None
  problems = []
  for base in mirrors(name):
    url = urllib.parse.urljoin(base, remote.file)
    report(f"Downloading {name} {split} images ({remote.size / 1e6:.1f} MB) from {url} "
           f"into {folder}")
    problem = _download(url, remote, path)
    if problem is None:
      return path
    report(f"  failed: {problem}")
    problems.append(f"{url}: {problem}")
  ways = [offline_hint] if offline_hint else []
  ways += SYSTEM_PACKAGES.get(name, [])
  ways.append(f"copy the official {remote.file} into {folder}")
  raise DownloadError(f"No local copy of the {name} {split} images, and the download failed ("
                      + "; ".join(problems) + "). To provide them: " + "; or ".join(ways) + ".")


def _download(url: str, remote: Remote, path: str) -> Optional[str]:
  """Downloads `url` to `path` and returns None if its size and SHA-256 match `remote`; else
  returns the problem in a few words and leaves nothing at `path` or beside it."""
  fd, part = tempfile.mkstemp(prefix=f".{remote.file}.", suffix=".part",
                              dir=os.path.dirname(path))
  try:
    digest, size = hashlib.sha256(), 0
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
      while chunk := response.read(_CHUNK):
        size += len(chunk)
        if size > remote.size:
          return f"more than the expected {remote.size} bytes"
        digest.update(chunk)
        out.write(chunk)
    if size != remote.size:
      return f"{size} bytes, expected {remote.size} (cut off)"
    if digest.hexdigest() != remote.sha256:
      return f"SHA-256 {digest.hexdigest()[:12]}..., expected {remote.sha256[:12]}... (corrupt)"
    os.replace(part, path)
    part = None
    return None
  except urllib.error.HTTPError as e:
    return f"HTTP {e.code} {e.reason}"
  except urllib.error.URLError as e:
    return f"{e.reason}"
  except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, cut-offs
    return f"{type(e).__name__}: {e}"
  finally:
    if part is not None and os.path.exists(part):
      os.remove(part)
