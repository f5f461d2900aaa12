"""Downloading the official idx files (hvae_jax/download.py) from a local HTTP server on
127.0.0.1: verified files land in the cache and are read from there; corrupt, cut-off or
interrupted downloads leave nothing behind; offline, one line says how to provide the data."""
import gzip
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from hvae_jax import data
from hvae_jax.data import download, idx
from tests.helpers import REPO, idx_bytes

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
GOOD = gzip.compress(idx_bytes(IMAGES))


class _Server(http.server.ThreadingHTTPServer):
  """Serves `files` (URL path -> bytes); paths in `cut` send half their bytes, then hang up."""

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.files: dict[str, bytes] = {}
    self.cut: set[str] = set()
    self.requests: list[str] = []

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(http.server.BaseHTTPRequestHandler):

  def do_GET(self):  # pylint: disable=invalid-name
    self.server.requests.append(self.path)
    body = self.server.files.get(self.path)
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body[:len(body) // 2] if self.path in self.server.cut else body)

  def log_message(self, *args):
    del args  # quiet


@pytest.fixture()
def server(monkeypatch, tmp_path):
  """A local mirror ($HVAE_DATA_MIRROR) and an empty cache; FILES lists the small test file."""
  srv = _Server()
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  monkeypatch.setenv(download.MIRROR_ENV, srv.url)
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.setattr(idx, "SYSTEM_DATA_DIRS", ())
  monkeypatch.setitem(download.FILES, ("fashion_mnist", "test"), download.Remote(
      "t10k-images-idx3-ubyte.gz", len(GOOD), hashlib.sha256(GOOD).hexdigest()))
  yield srv
  srv.shutdown()
  srv.server_close()


def _cache_files(tmp_path) -> list[str]:
  """Everything in the cache, hidden temporary files included."""
  return sorted(os.path.relpath(os.path.join(root, f), tmp_path / "cache")
                for root, _, files in os.walk(tmp_path / "cache") for f in files)


def test_download_verifies_caches_and_reads(server, tmp_path, capsys):
  server.files["/fashion_mnist/t10k-images-idx3-ubyte.gz"] = GOOD
  empty = tmp_path / "data"
  empty.mkdir()
  x = data.load_images("fashion_mnist", "test", data_dir=str(empty))  # 'auto': no local copy
  np.testing.assert_array_equal(x[..., 0], IMAGES)
  assert _cache_files(tmp_path) == [os.path.join("fashion_mnist", "t10k-images-idx3-ubyte.gz")]
  out = capsys.readouterr().out
  assert f"Downloading fashion_mnist test images (0.0 MB) from {server.url}" in out
  # The cache is a data folder like any other: read again without a request.
  np.testing.assert_array_equal(data.load_images("fashion_mnist", "test", source="idx")[..., 0],
                                IMAGES)
  assert server.requests == ["/fashion_mnist/t10k-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("damage, problem", [
    ("corrupt", r"SHA-256 [0-9a-f]{12}\.\.\., expected [0-9a-f]{12}\.\.\. \(corrupt\)"),
    ("cut", "IncompleteRead|cut off"),
    ("missing", "HTTP 404"),
])
def test_bad_download_is_rejected_and_leaves_nothing(server, tmp_path, damage, problem):
  path = "/fashion_mnist/t10k-images-idx3-ubyte.gz"
  if damage == "corrupt":  # same size, one byte changed
    server.files[path] = GOOD[:-5] + bytes([GOOD[-5] ^ 1]) + GOOD[-4:]
  elif damage == "cut":
    server.files[path] = GOOD
    server.cut.add(path)
  with pytest.raises(download.DownloadError, match=problem) as e:
    data.load_images("fashion_mnist", "test", data_dir=str(tmp_path))
  assert "\n" not in str(e.value)
  assert _cache_files(tmp_path) == []  # no data file, no temporary file


def test_interrupted_download_leaves_nothing(server, tmp_path, monkeypatch):
  server.files["/fashion_mnist/t10k-images-idx3-ubyte.gz"] = GOOD
  sha256 = hashlib.sha256

  class Interrupted:  # Ctrl-C once the first chunk is in the temporary file
    def __init__(self):
      self.digest, self.chunks = sha256(), 0

    def update(self, chunk):
      self.chunks += 1
      if self.chunks > 1:
        raise KeyboardInterrupt
      self.digest.update(chunk)

  monkeypatch.setattr(download, "_CHUNK", 1024)
  monkeypatch.setattr(hashlib, "sha256", Interrupted)
  with pytest.raises(KeyboardInterrupt):
    download.fetch("fashion_mnist", "test", report=lambda line: None)
  assert _cache_files(tmp_path) == []


def test_next_mirror_after_a_corrupt_one(server, tmp_path, monkeypatch):
  server.files["/bad/t10k-images-idx3-ubyte.gz"] = GOOD[::-1]
  server.files["/good/t10k-images-idx3-ubyte.gz"] = GOOD
  monkeypatch.delenv(download.MIRROR_ENV)
  monkeypatch.setitem(download.MIRRORS, "fashion_mnist", (server.url + "bad/",
                                                          server.url + "good/"))
  path = download.fetch("fashion_mnist", "test", report=lambda line: None)
  assert path == str(tmp_path / "cache" / "fashion_mnist" / "t10k-images-idx3-ubyte.gz")
  assert open(path, "rb").read() == GOOD
  assert server.requests == ["/bad/t10k-images-idx3-ubyte.gz", "/good/t10k-images-idx3-ubyte.gz"]


def test_offline_without_data_is_one_line_naming_the_ways(tmp_path):
  """train.py from a clone with no data beside it and no internet (conftest's mirror is a
  closed port on 127.0.0.1): one error line naming each way to provide the data."""
  if any(os.path.isdir(os.path.join(d, "fashion-mnist")) for d in data.SYSTEM_DATA_DIRS):
    pytest.skip("a system-wide FashionMNIST is installed")
  env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV}
  env[download.CACHE_ENV] = str(tmp_path / "cache")
  proc = subprocess.run([sys.executable, "train.py", "--config=configs/tiny.py",
                         f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 1, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
  for way in ("HVAE_DATA_DIR", "fashion_mnist.npz", "apt-get install dataset-fashion-mnist",
              str(tmp_path / "cache" / "fashion_mnist"), "download failed"):
    assert way in errors[0], errors[0]
