"""A stand-in Schema Registry for the codec's tests: the slice of the Confluent REST API the
worker uses (register a schema, the latest version of a subject, a schema by id), with its
error codes, credentials it demands (basic or bearer) and, optionally, TLS.

Served by uvicorn on loopback: the client under test is confluent-kafka's real
AsyncSchemaRegistryClient speaking real HTTP to it."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send


@dataclass
class RegistryStandIn:
    user_info: str | None = None  # "user:password" demanded as basic auth
    bearer_token: str | None = None  # demanded as "Authorization: Bearer ..."
    fail_with: int | None = None  # answer every request with this HTTP status (e.g. 503)
    schemas: dict[int, str] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def register(self, subject: str, schema: str) -> int:
        """What POST /subjects/{subject}/versions does: the schema's id, new or known."""
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        known = [
            schema_id
            for schema_id, text in self.schemas.items()
            if json.dumps(json.loads(text), sort_keys=True) == canonical
        ]
        schema_id = known[0] if known else 100 + len(self.schemas)
        self.schemas[schema_id] = schema
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("authorization", "")
        if self.user_info is not None:
            return given == "Basic " + base64.b64encode(self.user_info.encode()).decode()
        if self.bearer_token is not None:
            return given == f"Bearer {self.bearer_token}"
        return True

    def answer(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
        if self.fail_with is not None:
            return self.fail_with, {"error_code": self.fail_with * 100, "message": "down"}
        if not self._authorized(headers):
            return 401, {"error_code": 401, "message": "Unauthorized"}
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "subjects":
            schema = json.loads(body)["schema"]
            return 200, {"id": self.register(parts[1], schema)}
        if method == "GET" and parts[:1] == ["subjects"] and parts[2:] == ["versions", "latest"]:
            versions = self.subjects.get(parts[1])
            if not versions:
                return 404, {"error_code": 40401, "message": f"Subject '{parts[1]}' not found."}
            schema_id = versions[-1]
            return 200, {
                "subject": parts[1],
                "version": len(versions),
                "id": schema_id,
                "schema": self.schemas[schema_id],
            }
        if method == "GET" and parts[:2] == ["schemas", "ids"] and len(parts) == 3:
            schema_id = int(parts[2])
            if schema_id not in self.schemas:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            return 200, {"schema": self.schemas[schema_id]}
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((scope["method"], scope["path"]))
        status, payload = self.answer(scope["method"], scope["path"], body, headers)
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/vnd.schemaregistry.v1+json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


async def serve_standin(
    standin: RegistryStandIn, tls: tuple[str, str] | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """Start `standin` on a free loopback port (over TLS with (cert, key) files); its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}
    config = uvicorn.Config(standin, log_level="warning", lifespan="off", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110  (uvicorn offers a flag, not an event)
        await asyncio.sleep(0.01)
    scheme = "https" if tls else "http"
    return server, task, f"{scheme}://127.0.0.1:{port}"


__all__ = ["RegistryStandIn", "serve_standin"]
