"""An OpenAI-compatible server for the tests of the worker's `openai` models:
what vLLM, llama.cpp's server or Ollama answer, from the standard library.

Chat and completions answer "Echo: <the last user words>" a word per chunk
(streamed when asked, with the usage chunk when `stream_options.include_usage`
is set); embeddings are 3 numbers per input. A prompt containing "break" fails
mid-stream with an error event. Every request is recorded, so a test can see
what the worker sent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self, api_key: str, chunk_delay: float = 0.01) -> None:
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length))
                fake.requests.append(body)
                fake.authorizations.append(self.headers.get("authorization"))
                if self.headers.get("authorization") != f"Bearer {fake.api_key}":
                    self._json(401, {"error": {"message": "Incorrect API key provided"}})
                    return
                if body.get("model") != "upstream-llm":
                    self._json(404, {"error": {"message": f"model {body.get('model')} not found"}})
                    return
                if self.path == "/v1/embeddings":
                    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    data = [
                        {"object": "embedding", "index": i, "embedding": [len(t), 0.5, -1.0]}
                        for i, t in enumerate(texts)
                    ]
                    usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
                    self._json(200, {"object": "list", "data": data, "model": "x", "usage": usage})
                    return
                if self.path not in ("/v1/chat/completions", "/v1/completions"):
                    self._json(404, {"error": {"message": "no such route"}})
                    return
                if body.get("max_tokens", 1) < 1:
                    self._json(400, {"error": {"message": "max_tokens must be at least 1"}})
                    return
                chat = self.path == "/v1/chat/completions"
                if chat:
                    if not body.get("messages"):
                        self._json(400, {"error": {"message": "messages must not be empty"}})
                        return
                    prompt = str(body["messages"][-1].get("content", ""))
                else:
                    prompt = str(body.get("prompt", ""))
                words = ["Echo:", *prompt.split()]
                usage = {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(words),
                    "total_tokens": len(prompt.split()) + len(words),
                }
                if not body.get("stream"):
                    text = " ".join(words)
                    choice: dict[str, Any] = (
                        {"index": 0, "message": {"role": "assistant", "content": text}}
                        if chat
                        else {"index": 0, "text": text}
                    )
                    choice["finish_reason"] = "stop"
                    self._json(200, {"id": "up-1", "object": "x", "choices": [choice], "usage": usage})
                    return
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    part: dict[str, Any] = (
                        {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                    )
                    part["finish_reason"] = "stop" if i == len(words) - 1 else None
                    self._event({"id": "up-1", "object": "x", "created": 1, "model": "m", "choices": [part]})
                    if "break" in prompt and i == 1:
                        self._event({"error": {"message": "the GPU fell over"}})
                        self._end()
                        return
                    time.sleep(fake.chunk_delay)
                if (body.get("stream_options") or {}).get("include_usage"):
                    self._event({"id": "up-1", "choices": [], "usage": usage})
                self._chunk(b"data: [DONE]\n\n")
                self._end()

            def _json(self, status: int, body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _event(self, body: Any) -> None:
                self._chunk(b"data: " + json.dumps(body).encode() + b"\n\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
