"""A local GCS server for the gs:// tests: `python tests/bucket_server.py PORT BUCKET`.

gcp-storage-emulator (test extra), with one addition: download responses carry the object's
generation (x-goog-generation), which tensorstore's GCS driver (orbax's array writes) reads back for
its conditional writes and which the emulator leaves out; a create-only insert (ifGenerationMatch=0,
the writer lease) is refused when the object exists; and connections are accepted in parallel
while the handlers, which share the emulator's unsynchronised state (its resumable uploads, its
metadata file), run one at a time.
"""
import functools
import http
import http.server
import sys
import threading

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  except Exception:  # not found: the emulator's own handler answers 404
    pass
  return _download(request, response, storage, *args, **kwargs)


_insert = objects.insert


def insert_if_absent(request, response, storage, *args, **kwargs):
  """Honours ifGenerationMatch=0 (create only if absent: 412 otherwise), which the emulator ignores
  and gs:// writer leases rely on."""
  name = (request.query.get("name") or [None])[0]
  if name is None and request.query.get("uploadType") == ["multipart"]:
    name = request.data["meta"].get("name")
  if request.query.get("ifGenerationMatch") == ["0"] and name:
    try:
      storage.get_file_obj(request.params["bucket_name"], name)
    except Exception:  # absent: create it
      pass
    else:
      response.status = http.HTTPStatus.PRECONDITION_FAILED
      return None
  return _insert(request, response, storage, *args, **kwargs)


_STATE = threading.RLock()


def serialised(fn):
  @functools.wraps(fn)
  def run(*args, **kwargs):
    with _STATE:
      return fn(*args, **kwargs)
  return run


def main(port: int, bucket: str) -> None:
  # tensorstore sends requests in parallel; the emulator's one-request-at-a-time server drops some.
  # Threads accept them; the lock keeps two handlers from changing the emulator's state at once (a
  # resumable upload was lost that way under load).
  http.server.HTTPServer = http.server.ThreadingHTTPServer
  objects.download = download_with_generation  # JSON-API reads (?alt=media) call it by name
  server.HANDLERS = tuple(
      (pattern, {m: serialised({_download: download_with_generation,
                                _insert: insert_if_absent}.get(fn, fn))
                 for m, fn in methods.items()})
      for pattern, methods in server.HANDLERS)
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
