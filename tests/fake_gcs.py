"""An in-memory Google Cloud Storage server (the JSON API subset that gcsfs and TensorStore's gcs
driver use), for running workdirs on gs:// in the tests: `etils.epath` reaches it through gcsfs
(STORAGE_EMULATOR_HOST, with EPATH_USE_TF=false), Orbax's TensorStore through
TENSORSTORE_GCS_HTTP_URL. Objects live in one dict; generations make conditional writes real.

  python tests/fake_gcs.py PORT_FILE   # serves until killed; writes its port to PORT_FILE
"""

import json
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Tuple

_OBJECT = re.compile(r'^/(?:download/)?storage/v1/b/([^/]+)/o/([^/]+)$')
_LIST = re.compile(r'^/storage/v1/b/([^/]+)/o/?$')
_UPLOAD = re.compile(r'^/upload/storage/v1/b/([^/]+)/o/?$')
_COPY = re.compile(r'^/storage/v1/b/([^/]+)/o/([^/]+)/(?:rewriteTo|copyTo)/b/([^/]+)/o/([^/]+)$')
_MOVE = re.compile(r'^/storage/v1/b/([^/]+)/o/([^/]+)/moveTo/o/([^/]+)$')
_BUCKET = re.compile(r'^/storage/v1/b/([^/]+)/?$')


class Store:
  """Objects by (bucket, name): (data, generation)."""

  def __init__(self):
    self.objects: Dict[Tuple[str, str], Tuple[bytes, int]] = {}
    self.uploads: Dict[str, Tuple[str, str, bytearray, Optional[str]]] = {}
    self.generation = 1000
    self.lock = threading.Lock()

  def put(self, bucket: str, name: str, data: bytes, if_generation: Optional[str]) -> Optional[dict]:
    with self.lock:
      current = self.objects.get((bucket, name))
      if if_generation is not None and int(if_generation) != (current[1] if current else 0):
        return None
      self.generation += 1
      self.objects[(bucket, name)] = (bytes(data), self.generation)
      return self.meta(bucket, name)

  def meta(self, bucket: str, name: str) -> dict:
    data, generation = self.objects[(bucket, name)]
    return {'kind': 'storage#object', 'bucket': bucket, 'name': name, 'size': str(len(data)),
            'generation': str(generation), 'metageneration': '1', 'storageClass': 'STANDARD',
            'contentType': 'application/octet-stream', 'id': f'{bucket}/{name}/{generation}',
            'timeCreated': '2026-01-01T00:00:00.000Z', 'updated': '2026-01-01T00:00:00.000Z'}


class Handler(BaseHTTPRequestHandler):
  protocol_version = 'HTTP/1.1'
  store: Store = Store()

  def log_message(self, *args):  # Quiet.
    pass

  def _reply(self, code: int, body: bytes = b'', content_type: str = 'application/json',
             headers: Optional[dict] = None) -> None:
    self.send_response(code)
    self.send_header('Content-Type', content_type)
    self.send_header('Content-Length', str(len(body)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    if self.command != 'HEAD':
      self.wfile.write(body)

  def _json(self, code: int, value: dict, headers: Optional[dict] = None) -> None:
    self._reply(code, json.dumps(value).encode(), headers=headers)

  def _error(self, code: int, message: str) -> None:
    self._json(code, {'error': {'code': code, 'message': message}})

  def _body(self) -> bytes:
    length = int(self.headers.get('Content-Length') or 0)
    return self.rfile.read(length) if length else b''

  def _split(self) -> Tuple[str, Dict[str, str]]:
    url = urllib.parse.urlsplit(self.path)
    return url.path, {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}

  def do_GET(self):  # pylint: disable=invalid-name
    path, query = self._split()
    store = self.store
    if m := _LIST.match(path):
      return self._list(m.group(1), query)
    if m := _BUCKET.match(path):
      return self._json(200, {'kind': 'storage#bucket', 'name': m.group(1), 'id': m.group(1),
                              'location': 'US', 'storageClass': 'STANDARD'})
    if m := _OBJECT.match(path):
      bucket, name = m.group(1), urllib.parse.unquote(m.group(2))
      with store.lock:
        found = store.objects.get((bucket, name))
        meta = store.meta(bucket, name) if found else None
      if not found:
        return self._error(404, f'No such object: {bucket}/{name}')
      data, generation = found
      if 'ifGenerationNotMatch' in query and int(query['ifGenerationNotMatch']) == generation:
        return self._reply(304, headers={'x-goog-generation': str(generation)})
      if 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != generation:
        return self._error(412, 'Precondition failed')
      if query.get('alt') != 'media' and not path.startswith('/download/'):
        return self._json(200, meta)
      headers = {'x-goog-generation': str(generation), 'x-goog-metageneration': '1',
                 'x-goog-stored-content-length': str(len(data))}
      ranged = re.match(r'bytes=(\d+)-(\d*)', self.headers.get('Range', ''))
      if ranged:
        start = int(ranged.group(1))
        end = int(ranged.group(2)) + 1 if ranged.group(2) else len(data)
        if start >= len(data) and len(data):
          return self._error(416, 'Range not satisfiable')
        part = data[start:end]
        headers['Content-Range'] = f'bytes {start}-{start + len(part) - 1}/{len(data)}'
        return self._reply(206, part, 'application/octet-stream', headers)
      return self._reply(200, data, 'application/octet-stream', headers)
    return self._error(404, f'Unknown GET {path}')

  do_HEAD = do_GET

  def _list(self, bucket: str, query: Dict[str, str]) -> None:
    prefix, delimiter = query.get('prefix', ''), query.get('delimiter', '')
    start = query.get('pageToken') or query.get('startOffset', '')
    limit = int(query.get('maxResults', 1000))
    with self.store.lock:
      names = sorted(n for b, n in self.store.objects if b == bucket and n.startswith(prefix))
      items, prefixes, token = [], [], None
      for name in names:
        if name < start:
          continue
        if delimiter and delimiter in name[len(prefix):]:
          sub = name[:len(prefix) + name[len(prefix):].index(delimiter) + 1]
          if sub not in prefixes:
            prefixes.append(sub)
          continue
        if len(items) == limit:
          token = name
          break
        items.append(self.store.meta(bucket, name))
    result = {'kind': 'storage#objects', 'items': items}
    if prefixes:
      result['prefixes'] = prefixes
    if token:
      result['nextPageToken'] = token
    return self._json(200, result)

  def do_POST(self):  # pylint: disable=invalid-name
    path, query = self._split()
    body = self._body()
    if m := _UPLOAD.match(path):
      return self._upload(m.group(1), query, body)
    if m := _COPY.match(path):
      source = (m.group(1), urllib.parse.unquote(m.group(2)))
      with self.store.lock:
        found = self.store.objects.get(source)
      if not found:
        return self._error(404, f'No such object: {source[0]}/{source[1]}')
      meta = self.store.put(m.group(3), urllib.parse.unquote(m.group(4)), found[0], None)
      if '/rewriteTo/' in path:
        return self._json(200, {'kind': 'storage#rewriteResponse', 'done': True,
                                'objectSize': meta['size'], 'totalBytesRewritten': meta['size'],
                                'resource': meta})
      return self._json(200, meta)
    if m := _MOVE.match(path):
      bucket, source = m.group(1), urllib.parse.unquote(m.group(2))
      with self.store.lock:
        found = self.store.objects.pop((bucket, source), None)
      if not found:
        return self._error(404, f'No such object: {bucket}/{source}')
      return self._stored(bucket, urllib.parse.unquote(m.group(3)), found[0], None)
    return self._error(404, f'Unknown POST {path}')

  def _upload(self, bucket: str, query: Dict[str, str], body: bytes) -> None:
    if 'upload_id' in query:
      return self._chunk(query, body)
    kind = query.get('uploadType', 'media')
    if_generation = query.get('ifGenerationMatch')
    if kind == 'media':
      return self._stored(bucket, query['name'], body, if_generation)
    if kind == 'multipart':
      boundary = re.search(r'boundary="?([^";]+)"?', self.headers['Content-Type']).group(1).encode()
      parts = [p for p in body.split(b'--' + boundary) if p.strip() not in (b'', b'--')]
      meta = json.loads(parts[0].split(b'\r\n\r\n', 1)[1].strip())
      data = parts[1].split(b'\r\n\r\n', 1)[1]
      data = data[:-2] if data.endswith(b'\r\n') else data
      return self._stored(bucket, query.get('name') or meta['name'], data, if_generation)
    if kind == 'resumable':
      name = query.get('name') or json.loads(body or b'{}')['name']
      upload_id = f'u{len(self.store.uploads)}-{id(body)}'
      self.store.uploads[upload_id] = (bucket, name, bytearray(), if_generation)
      host = self.headers['Host']
      location = f'http://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={upload_id}'
      return self._reply(200, b'', headers={'Location': location})
    return self._error(400, f'Unknown uploadType {kind}')

  def _stored(self, bucket: str, name: str, data: bytes, if_generation: Optional[str]) -> None:
    meta = self.store.put(bucket, name, data, if_generation)
    if meta is None:
      return self._error(412, 'Precondition failed')
    return self._json(200, meta)

  def do_PUT(self):  # pylint: disable=invalid-name
    path, query = self._split()
    body = self._body()
    if not _UPLOAD.match(path):
      return self._error(404, f'Unknown PUT {path}')
    return self._chunk(query, body)

  def _chunk(self, query: Dict[str, str], body: bytes) -> None:
    """A piece of a resumable upload; the last one (Content-Range's total reached) stores it."""
    upload = self.store.uploads.get(query.get('upload_id', ''))
    if upload is None:
      return self._error(404, f'No upload {query.get("upload_id")!r}')
    bucket, name, data, if_generation = upload
    data.extend(body)
    total = re.search(r'/(\d+|\*)$', self.headers.get('Content-Range', 'bytes */*'))
    if total and total.group(1) != '*' and len(data) >= int(total.group(1)):
      del self.store.uploads[query['upload_id']]
      return self._stored(bucket, name, bytes(data), if_generation)
    return self._reply(308, headers={'Range': f'bytes=0-{len(data) - 1}'} if data else {})

  def do_DELETE(self):  # pylint: disable=invalid-name
    path, query = self._split()
    m = _OBJECT.match(path)
    if not m:
      return self._error(404, f'Unknown DELETE {path}')
    key = (m.group(1), urllib.parse.unquote(m.group(2)))
    with self.store.lock:
      found = self.store.objects.get(key)
      if found is None:
        return self._error(404, f'No such object: {key[0]}/{key[1]}')
      if 'ifGenerationMatch' in query and int(query['ifGenerationMatch']) != found[1]:
        return self._error(412, 'Precondition failed')
      del self.store.objects[key]
    return self._reply(204)


class _Server(ThreadingHTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], ConnectionError):  # A client that hung up is no error.
      super().handle_error(request, client_address)


def serve(port: int = 0) -> ThreadingHTTPServer:
  """A server on 127.0.0.1 (port 0: any free one) running in a daemon thread."""
  server = _Server(('127.0.0.1', port), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server


def environment(port: int) -> Dict[str, str]:
  """What a process needs to reach the server for gs:// paths (epath via gcsfs, TensorStore)."""
  return {'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{port}', 'EPATH_USE_TF': 'false',
          'FSSPEC_GS_TOKEN': 'anon', 'TENSORSTORE_GCS_HTTP_URL': f'http://127.0.0.1:{port}',
          'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'fake-token', 'GCE_METADATA_HOST': '127.0.0.1:9',
          'GCE_METADATA_IP': '127.0.0.1:9', 'NO_GCE_CHECK': 'true',
          'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}


if __name__ == '__main__':
  running = serve()
  with open(sys.argv[1], 'w') as f:
    f.write(str(running.server_address[1]))
  threading.Event().wait()
