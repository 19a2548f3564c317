"""A stand-in for the metadata server a Cloud Function asks for its credentials: enough of it for
google-auth's Application Default Credentials and for opcancel's own token fetch, on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_ANSWERS = {
    "/computeMetadata/v1/instance/service-accounts/default/token": (
        "application/json",
        json.dumps({"access_token": "bench-token", "expires_in": 3599, "token_type": "Bearer"}),
    ),
    "/computeMetadata/v1/instance/service-accounts/default/": (
        "application/json",
        json.dumps(
            {"email": "opcancel@opcancel-bench.iam.gserviceaccount.com", "scopes": _SCOPES, "aliases": ["default"]}
        ),
    ),
    "/computeMetadata/v1/project/project-id": ("text/plain", "opcancel-bench"),
    "/computeMetadata/v1/universe/universe-domain": ("text/plain", "googleapis.com"),
    # google-auth's "is this Google Cloud?" ping.
    "/": ("text/plain", ""),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in _ANSWERS or self.headers.get("metadata-flavor") != "Google":
            self.send_response(404)
            self.end_headers()
            return
        content_type, text = _ANSWERS[path]
        body = text.encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetadataServer:
    """Serves on 127.0.0.1 in a daemon thread; ``host`` is what GCE_METADATA_HOST and GCE_METADATA_IP take."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="metadata", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
