"""One file-system layer for local paths and remote URLs (gs://), through etils.epath.

Local paths keep local semantics (absolute paths, atomic renames, appends). A remote URL (anything
with "://") is an object store: an object is written whole (so a write is atomic already) and cannot
be appended to, so append-only logs are staged in a local file and uploaded whole by `sync`.
gs:// needs gcsfs (`pip install -e ".[gcs]"`); orbax checkpoints reach the same URLs through
tensorstore's own GCS driver. Model and data paths that are remote are copied once into a local
cache (`localize`), since safetensors and the tokenizers read local files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np
from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """Local paths made absolute (orbax and JAX's cache want them); URLs as they are."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(base: str | os.PathLike, *parts: str) -> str:
  return os.fspath(epath.Path(base).joinpath(*parts)) if is_remote(base) else os.path.join(
      base, *parts)


def exists(path: str | os.PathLike) -> bool:
  return epath.Path(path).exists()


def isfile(path: str | os.PathLike) -> bool:
  p = epath.Path(path)
  return p.exists() and not p.is_dir()


def makedirs(path: str | os.PathLike) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
  """Names in a directory, sorted; [] when it does not exist."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.exists() else []


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Renames a file or directory (an object store copies then deletes)."""
  makedirs(epath.Path(dst).parent)
  epath.Path(src).rename(dst)


def remove(path: str | os.PathLike) -> None:
  """Deletes a file or a whole directory (nothing when it does not exist)."""
  p = epath.Path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()


def read_text(path: str | os.PathLike) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: str | os.PathLike) -> bytes:
  return epath.Path(path).read_bytes()


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` so that a reader never sees half of it (a failed write keeps the old file)."""
  write_bytes(path, text.encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  path = os.fspath(path)
  if is_remote(path):  # an object upload is all or nothing
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """`obj` as strict JSON (a non-finite number is written as null: `NaN` is not JSON), atomically."""
  write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False))


def _finite(obj: Any) -> Any:
  if isinstance(obj, float) or isinstance(obj, np.floating):
    return float(obj) if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.ndarray):
    return _finite(obj.tolist())
  return obj


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(read_bytes(path))) as z:
    return {k: z[k] for k in z.files}


def staging_path(url: str, staging_dir: str = "") -> str:
  """A local path standing in for the remote `url` while it is written (under `staging_dir`, default
  <tmp>/dots_jax_staging), the same for the same URL."""
  root = staging_dir or os.path.join(tempfile.gettempdir(), "dots_jax_staging")
  os.makedirs(root, exist_ok=True)
  key = hashlib.sha256(url.encode()).hexdigest()[:16]
  return os.path.join(root, f"{key}-{os.path.basename(url.rstrip('/'))}")


class AppendLog:
  """An append-only text file (metrics.jsonl, samples.jsonl). Local: appended in place, every line
  at once. Remote: appended to a local staging copy, uploaded whole by `sync()` (the loop syncs at
  every checkpoint and at the end)."""

  def __init__(self, path: str | os.PathLike, staging_dir: str = ""):
    self.path = os.fspath(path)
    self.remote = is_remote(self.path)
    if self.remote:
      self.local = staging_path(self.path, staging_dir)
      # Start from what the bucket holds (a resumed run appends to it).
      data = read_bytes(self.path) if exists(self.path) else b""
      with open(self.local, "wb") as f:
        f.write(data)
    else:
      self.local = self.path
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self._dirty = False

  def append(self, lines: list[str]) -> None:
    with open(self.local, "a") as f:
      f.write("".join(line + "\n" for line in lines))
    self._dirty = True

  def rewrite(self, lines: list[str]) -> None:
    """Replaces the whole file (a resume truncates records written after its checkpoint)."""
    text = "".join(line + "\n" for line in lines)
    if self.remote:
      with open(self.local, "w") as f:
        f.write(text)
      self._dirty = True
      self.sync()
    else:
      write_text(self.path, text)

  def sync(self) -> None:
    if self.remote and self._dirty:
      with open(self.local, "rb") as f:
        write_bytes(self.path, f.read())
    self._dirty = False


def localize(path: str, cache_dir: str = "") -> str:
  """A local copy of a remote file or directory (one level of files, as a Hugging Face checkpoint
  directory), made once under `cache_dir` (default $DOTS_JAX_CACHE or ~/.cache/dots_jax, in
  remote/); local paths are returned as they are. A copy interrupted half-way is redone: the marker
  file is written last."""
  if not is_remote(path):
    return path
  src = epath.Path(path)
  if not src.exists():
    raise FileNotFoundError(f"{path} does not exist")
  root = cache_dir or os.environ.get("DOTS_JAX_CACHE") or os.path.expanduser("~/.cache/dots_jax")
  key = hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:16]
  dest = os.path.join(root, "remote", f"{key}-{src.name}")
  marker = dest + ".complete"
  if os.path.exists(marker):
    return dest
  if src.is_dir():
    os.makedirs(dest, exist_ok=True)
    for f in src.iterdir():
      if not f.is_dir():
        write_bytes(os.path.join(dest, f.name), f.read_bytes())
  else:
    write_bytes(dest, src.read_bytes())
  with open(marker, "w") as f:
    f.write(path + "\n")
  return dest


def upload_dir(local_dir: str, url: str) -> None:
  """Copies the files of `local_dir` (one level) to the remote directory `url`."""
  for name in sorted(os.listdir(local_dir)):
    full = os.path.join(local_dir, name)
    if os.path.isfile(full):
      with open(full, "rb") as f:
        write_bytes(join(url, name), f.read())
