"""A GCS emulator on loopback for the gs:// tests, and its patched launcher.

``GcsEmulator`` (a context manager) starts ``python tests/gcs_emulator.py PORT
BUCKET...`` on a free 127.0.0.1 port and gives the environment a process
needs to reach it at ``gs://BUCKET/...`` through TensorFlow (the modular
``tensorflow-io-gcs-filesystem`` plugin), Beam (google-cloud-storage) and TFX
``fileio`` (see docs/research/remote_storage.md). The variables must be set
before TensorFlow is imported, so gs:// work runs in child processes with
``GcsEmulator.env`` (``run_python``), every one of them under a timeout:
google-cloud-cpp retries a failing call for up to 15 minutes.

The launcher runs gcp-storage-emulator (PyPI, 2026.7.19) in memory with four
fixes that the TF plugin (google-cloud-cpp v1.21.0, libcurl 8.4.0) needs, all
applied in the launcher's process only:

1. Empty XML-API PUT body: the emulator does len(None) and drops the
   connection; google-cloud-cpp uses exactly that call for the "dir/" marker
   objects of tf.io.gfile.makedirs, and then retries for ~15 minutes.
2. Host header without port: google-cloud-cpp v1.21 sends "Host: 127.0.0.1"
   (no port), so the emulator wrote mediaLink=http://127.0.0.1/... (port 80)
   into objects TF uploaded; google-cloud-storage (Beam) downloads through
   mediaLink and then fails. The server's own port is filled in.
3. Paced downloads: the body is written in 8 KiB pieces with a 2 ms pause.
   A loopback server that sends >~144 KiB at once makes the plugin's
   google-cloud-cpp/libcurl-8.4 pause/unpause path corrupt the heap
   (SIGSEGV/SIGBUS in the *client* process). GCS_EMU_CHUNK=0 turns pacing off.
4. Threaded server (ThreadingHTTPServer): the stock single-threaded server
   with a backlog of 5 serialises Beam's and TF's concurrent clients.
"""
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: On PYTHONPATH of every child: its sitecustomize makes Beam's GcsIO go anonymous at
#: once (instead of ~41 s of google.auth.default() retries), in Beam's workers too.
SITE_DIR = os.path.join(HERE, "gcs_site")


def emulator_env(port: int) -> Dict[str, str]:
    """The variables a process needs (set before ``import tensorflow``) to reach
    the emulator at ``gs://``; all five GCS cache variables must be set (the
    plugin crashes on a missing one, tensorflow/io#2020)."""
    endpoint = f"http://127.0.0.1:{port}"
    return {
        "TF_USE_MODULAR_FILESYSTEM": "1",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,
        "STORAGE_EMULATOR_HOST": endpoint,
        "GOOGLE_CLOUD_PROJECT": "x",
        "GCS_READ_CACHE_BLOCK_SIZE_MB": "1",
        "GCS_READ_CACHE_MAX_SIZE_MB": "16",
        "GCS_READ_CACHE_MAX_STALENESS": "0",
        "GCS_STAT_CACHE_MAX_AGE": "0",
        "GCS_STAT_CACHE_MAX_ENTRIES": "1024",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "NO_GCE_CHECK": "True",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """``with GcsEmulator(["bucket"]) as emu:`` -- ``emu.env`` is ``os.environ``
    plus ``emulator_env``; ``emu.run_python(code)`` runs code in a child with it."""

    def __init__(self, buckets: List[str], start_timeout_s: float = 30.0):
        self.buckets = buckets
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.env = {**os.environ, **emulator_env(self.port),
                    "PYTHONPATH": os.pathsep.join(
                        p for p in (SITE_DIR, ROOT, os.environ.get("PYTHONPATH")) if p)}
        self._proc: Optional[subprocess.Popen] = None

    def __enter__(self) -> "GcsEmulator":
        self._proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "gcs_emulator.py"), str(self.port), *self.buckets],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.start_timeout_s
        line = ""
        while time.monotonic() < deadline and self._proc.poll() is None:
            line = self._proc.stdout.readline()
            if line.startswith("READY"):
                return self
        self.__exit__(None, None, None)
        raise RuntimeError(f"GCS emulator did not start: {line!r}")

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def run_python(self, code: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess:
        """Runs ``code`` in ``python -c`` with the emulator's environment; raises
        ``subprocess.TimeoutExpired`` after ``timeout_s``; output captured."""
        return subprocess.run(
            [sys.executable, "-c", code],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)

    def run(self, argv: List[str], timeout_s: float = 300.0) -> subprocess.CompletedProcess:
        """Runs a command with the emulator's environment (``timeout_s`` bound)."""
        return subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout_s)

    def popen(self, argv: List[str]) -> subprocess.Popen:
        """Starts a long-running command (a server) with the emulator's environment;
        stdout is a text pipe, stderr goes to this process's."""
        return subprocess.Popen(argv, env={**self.env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- launcher
import http.server
import logging
import signal
from urllib.parse import urlparse


def _patched_emulator():
    """Imports gcp_storage_emulator with fixes 1-4 applied; returns its server module."""
    from gcp_storage_emulator.handlers import objects

    # --- fix 1 (must be patched before gcp_storage_emulator.server is imported,
    # because its HANDLERS table captures objects.xml_upload at import time).
    _orig_xml_upload = objects.xml_upload

    def _xml_upload(request, response, storage, *args, **kwargs):
        if request.data is None:
            request._data = b""
        return _orig_xml_upload(request, response, storage, *args, **kwargs)

    objects.xml_upload = _xml_upload

    from gcp_storage_emulator import server as emu  # noqa: E402

    # --- fix 2
    _orig_request_init = emu.Request.__init__

    def _request_init(self, request_handler, method):
        _orig_request_init(self, request_handler, method)
        host = request_handler.headers.get("Host")
        if host and ":" not in host:
            port = request_handler.server.server_address[1]
            self._base_url = "http://{}:{}".format(host, port)
            self._full_url = self._base_url + self._path
            self._parsed_url = urlparse(self._full_url)

    emu.Request.__init__ = _request_init

    # --- fix 3
    _CHUNK = int(os.environ.get("GCS_EMU_CHUNK", "8192"))

    def _response_close(self):
        h = self._handler
        h.send_response(self.status.value, self.status.phrase)
        for k, v in self._headers.items():
            h.send_header(k, v)
        content = self._content
        if isinstance(content, str):
            content = content.encode("utf-8")
        h.send_header("Content-Length", str(len(content)))
        h.end_headers()
        if _CHUNK <= 0 or len(content) <= _CHUNK:
            h.wfile.write(content)
            return
        for i in range(0, len(content), _CHUNK):
            h.wfile.write(content[i:i + _CHUNK])
            h.wfile.flush()
            time.sleep(0.002)

    emu.Response.close = _response_close

    # --- fix 4
    class _ThreadingHTTPServer(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 64

    emu.server.HTTPServer = _ThreadingHTTPServer
    return emu


def main():
    from gcp_storage_emulator.handlers import buckets

    emu = _patched_emulator()
    port = int(sys.argv[1])
    level = os.environ.get("GCS_EMU_LOG_LEVEL", "ERROR")
    logging.basicConfig(level=level)
    logging.getLogger("gcp_storage_emulator").setLevel(level)
    srv = emu.create_server("127.0.0.1", port, in_memory=True)
    for name in sys.argv[2:]:
        buckets.create_bucket(name, srv._storage)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    srv.start()
    print("READY", port, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
