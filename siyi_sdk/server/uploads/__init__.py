"""Uploads on their own connection, the server side: streamed, checksummed, resumable (§8).

`Uploads` adds three routes to a ProtocolServer's application, beside the packet ones:

- ``POST /upload``: the raw body, with ``X-Siyi-Upload-Id``, ``X-Siyi-File-Name``
  (percent-encoded UTF-8), ``Content-Length``, ``X-Siyi-File-MD5`` and/or
  ``X-Siyi-File-SHA256``; a resumed part carries ``Content-Range: bytes START-END/TOTAL``.
- a WebSocket at ``/upload``: a header text frame
  ``{"upload_id", "name", "size", "md5", "sha256", "offset"}``, binary frames, and (when no
  digest came in the header) a last text frame ``{"md5": ..., "sha256": ...}``.
- ``GET /upload/{upload_id}``: ``{"upload_id", "received", "size"}``, where to resume (plus
  ``"file"`` once the upload completed, for a client whose answer was lost).

Both upload channels authenticate like ``/general`` and answer with one Response packet.

An upload belongs to the principal that started it (§8): the ``principal`` of the session
that sent its first part, compared with `same_owner`, never the session itself, so its owner
may go on from another session or another process. To any other principal its status, its
resumption and a repeat of its id (a finished upload's file included) are answered with what
the status of an unknown id gets, 404 ``unknown upload '<id>'``, on both channels; that answer
is given before its size, progress or name is compared, without waiting for a running part,
and without touching its bytes. (That the id is taken shows, since a new id would be
accepted; nothing else about the upload does.) The owner is recorded as its owner key in memory
and in ``state.json``, so a partial upload found on disk (after a restart, or by another
process sharing the directory) keeps it. A ``state.json`` written before owners were recorded
is taken as owned by ``None``, the one principal of a server without keys: on such a server it
resumes as before, on a server with keys nobody can claim it and it expires.

Storage, under `directory` (``upload_dir``)::

    <file_id>/<name>              a completed upload; file_id is a fresh UUID4 (hex) per
                                  file, name the sanitised name (`sanitize_filename`)
    .partial/<key>/data           the bytes received so far of an upload in progress
    .partial/<key>/state.json     {"upload_id", "name", "size", "owner"}; key = SHA-256 of
                                  the id, owner = the owner key (`owner_key`) as text

Bytes go to disk in batches (about 1 MiB) from a worker thread, hashed (MD5 and SHA-256) as
they are written: a file is never held in memory, and the event loop never waits on the disk.
The hasher states of a partial upload stay in memory, so a resume continues them; a partial
upload found on disk without them (after a restart) is re-hashed once. A partial upload not
resumed within `resume_ttl` seconds is removed; one that fails its digest or size check is
removed at once.

The package, one job per module:

- `names`: `sanitize_filename`, the stored name of a file;
- `records`: `StoredFile`, `UploadHandler`, and what the service knows of each upload;
- `parts`: one part as its request declares it, and the one answer it gets;
- `channels`: how a part's bytes arrive (an HTTP body, WebSocket frames);
- `sink`: writing them to disk, batched, hashed, off the event loop;
- `store`: the uploads of one server, in memory and on disk, and their expiry;
- `receiver`: taking one part (owner, lock, bytes, checks, the stored file);
- `http_endpoints`, `ws_endpoint`: the routes; `options`: their settings;
- `service`: `Uploads`, which puts these together.
"""

from __future__ import annotations

from .names import MAX_NAME_BYTES, sanitize_filename
from .records import StoredFile, UploadHandler
from .service import Uploads

__all__ = ["MAX_NAME_BYTES", "StoredFile", "UploadHandler", "Uploads", "sanitize_filename"]
