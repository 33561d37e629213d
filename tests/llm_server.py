"""A local OpenAI-compatible HTTP server for tests: chat completions, files and batches, with fault modes.

It binds 127.0.0.1 on a free port, answers with canned JSON chosen by rules on the last user message,
reports `usage`, counts requests and the most requests in flight at once, and can be told to fail the
next requests in given ways. `with FakeLLMServer() as server:` starts it and stops it.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Fault modes, consumed one per chat request in order:
#   "429" / "500": answer that HTTP status; "timeout": sleep `sleep_s` before answering (past the client's
#   timeout); "garbage": content that is not JSON; "badschema": JSON that fails the requested schema.
FAULTS = ("429", "500", "timeout", "garbage", "badschema")


class FakeLLMServer:
    """OpenAI-compatible fake. `rules` are (substring of the last user message, answer object) pairs."""

    def __init__(self, rules: list[tuple[str, dict[str, Any]]] | None = None,
                 default: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 delay_s: float = 0.0, sleep_s: float = 2.0, batch_polls: int = 2) -> None:
        self.rules = list(rules or [])
        self.default = default if default is not None else {}
        self.delay_s, self.sleep_s, self.batch_polls = delay_s, sleep_s, batch_polls
        self.faults: deque[str] = deque()
        self.reject_json_schema = False  # answer 400 to response_format json_schema, like some local servers
        self.chat_requests = 0
        self.http_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str] = []
        self.response_formats: list[str] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeLLMServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in "timeout" mode
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ answers
    def answer_for(self, body: dict[str, Any]) -> dict[str, Any]:
        """The canned answer object for a chat request body."""
        user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        for needle, answer in self.rules:
            if needle in user:
                return answer
        return self.default(body) if callable(self.default) else self.default

    def completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
        completion_tokens = max(1, len(content) // 4)
        return {
            "id": f"chatcmpl-{self.chat_requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def run_batch(self, batch: dict[str, Any]) -> None:
        """Answer every line of the batch's input file into a new output file."""
        out = []
        for line in self.files[batch["input_file_id"]].decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                body = self.completion(row["body"], json.dumps(self.answer_for(row["body"])))
                out.append({"id": f"resp-{len(out)}", "custom_id": row["custom_id"],
                            "response": {"status_code": 200, "request_id": f"req-{len(out)}", "body": body},
                            "error": None})
        file_id = self._new_file("".join(json.dumps(r) + "\n" for r in out).encode("utf-8"))
        batch.update(status="completed", output_file_id=file_id, completed_at=int(time.time()),
                     request_counts={"total": len(out), "completed": len(out), "failed": 0})

    def _new_file(self, data: bytes) -> str:
        with self._lock:
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
        return file_id


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, payload: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "fake_error", "code": status}})

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        fake = self.fake
        fake.http_requests += 1
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in fake.batches:
            batch = fake.batches[parts[2]]
            batch["polls"] += 1
            if batch["status"] != "completed" and batch["polls"] >= fake.batch_polls:
                fake.run_batch(batch)
            elif batch["status"] == "validating":
                batch["status"] = "in_progress"
            self._send(200, {k: v for k, v in batch.items() if k != "polls"})
        elif parts[:2] == ["v1", "files"] and len(parts) == 4 and parts[3] == "content" and parts[2] in fake.files:
            self._send(200, None, raw=fake.files[parts[2]])
        else:
            self._error(404, f"no route GET {self.path}")

    def do_POST(self) -> None:
        fake = self.fake
        fake.http_requests += 1
        fake.auth_headers.append(self.headers.get("Authorization", ""))
        if self.path == "/v1/chat/completions":
            self._chat(json.loads(self._body()))
        elif self.path == "/v1/files":
            self._upload()
        elif self.path == "/v1/batches":
            req = json.loads(self._body())
            if req.get("input_file_id") not in fake.files:
                return self._error(400, f"unknown input_file_id {req.get('input_file_id')!r}")
            batch_id = f"batch-{len(fake.batches)}"
            fake.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                "completion_window": req["completion_window"], "status": "validating",
                "created_at": int(time.time()), "output_file_id": None, "error_file_id": None, "polls": 0,
            }
            self._send(200, {k: v for k, v in fake.batches[batch_id].items() if k != "polls"})
        else:
            self._error(404, f"no route POST {self.path}")

    def _upload(self) -> None:
        raw = self._body()
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        if "file" not in fields or fields.get("purpose") is None:
            return self._error(400, "multipart upload needs 'file' and 'purpose'")
        data = fields["file"].get_payload(decode=True)
        file_id = self.fake._new_file(data)
        self._send(200, {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                         "filename": fields["file"].get_filename() or "upload.jsonl",
                         "purpose": fields["purpose"].get_content().strip(), "status": "processed"})

    def _chat(self, body: dict[str, Any]) -> None:
        fake = self.fake
        with fake._lock:
            fake.chat_requests += 1
            fake.in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            fault = fake.faults.popleft() if fake.faults else None
            fake.response_formats.append((body.get("response_format") or {}).get("type", "none"))
        try:
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if fake.reject_json_schema and body.get("response_format", {}).get("type") == "json_schema":
                return self._error(400, "response_format of type json_schema is not supported by this server")
            if fault in ("429", "500"):
                return self._error(int(fault), "rate limited" if fault == "429" else "internal error")
            if fault == "timeout":
                fake._stop.wait(fake.sleep_s)
            if fault == "garbage":
                content = '{"events": [ oops'
            elif fault == "badschema":
                content = json.dumps({"unexpected": True})
            else:
                content = json.dumps(fake.answer_for(body))
            self._send(200, fake.completion(body, content))
        finally:
            with fake._lock:
                fake.in_flight -= 1
