"""A local Opik contract server for tests and the benchmark.

Every request body is validated twice: against the OpenAPI spec's schemas
(jsonschema, Draft 2020-12, the shared spec file) and against opik's own
generated REST models (``opik.rest_api.types.TraceWrite`` / ``SpanWrite``).
Ids must be UUID version 7 as the real backend demands. Stored rows are kept by
id with the real upsert rule: the newest ``last_updated_at`` wins.

Faults: :meth:`down` stops listening (connections are refused) and :meth:`up`
listens again on the same port; :meth:`fail` answers the next ``n`` batch
requests with a status (and headers); :attr:`stall` delays every answer;
:attr:`refuse_ids` answers 400 to any batch holding one of those ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from jsonschema import Draft202012Validator


def _spec_path() -> Path:
    """shared/ sits beside the checkout (CI clones main next to it); /work/shared on dev machines."""
    relative = Path("contracts") / "opik-openapi.yaml"
    beside = Path(__file__).resolve().parents[3] / "shared" / relative
    return beside if beside.exists() else Path("/work/shared") / relative


SPEC_PATH = _spec_path()


class _SpecLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The spec holds a bare ``=`` (an enum value) that PyYAML reads as the ``value`` tag."""


_SpecLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))

_SPEC: dict[str, Any] | None = None


def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    global _SPEC
    if _SPEC is None:
        with path.open(encoding="utf-8") as fh:
            _SPEC = yaml.load(fh, Loader=_SpecLoader)
    return _SPEC


def validator_for(schema_name: str) -> Draft202012Validator:
    spec = load_spec()
    # "$ref" beside "components": the refs inside the schemas resolve against this root.
    return Draft202012Validator({"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]})


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Fault:
    remaining: int
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=lambda: {"errors": ["injected fault"]})


class OpikContractServer:
    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 workspace: str | None = None, use_opik_models: bool = True, validate: bool = True) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.workspace = workspace
        self.traces: dict[str, dict[str, Any]] = {}
        self.spans: dict[str, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()  # id -> times received
        self.requests: list[dict[str, Any]] = []  # {path, status, items, headers}
        self.invalid: list[str] = []  # why each refused request was refused
        self.faults: list[Fault] = []
        self.stall = 0.0
        self.refuse_ids: set[str] = set()
        self.validate = validate  # False only to measure a client's own floor (bench --no-validate)
        self._validators = {"traces": validator_for("TraceBatch_Write"), "spans": validator_for("SpanBatch_Write")}
        self._models: dict[str, Any] = {}
        if use_opik_models:
            from opik.rest_api.types import SpanWrite, TraceWrite

            self._models = {"traces": TraceWrite, "spans": SpanWrite}
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    async def up(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/api/v1/private/traces/batch", self._batch("traces"))
        app.router.add_post("/api/v1/private/spans/batch", self._batch("spans"))
        app.router.add_get("/api/is-alive/ping", self._ping)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening: new connections are refused until :meth:`up`."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpikContractServer:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    def fail(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        self.faults.append(Fault(times, status, dict(headers or {})))

    # -- handlers --------------------------------------------------------------------------

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True})

    def _error(self, status: int, message: str, record: dict[str, Any]) -> web.Response:
        self.invalid.append(message)
        record["status"] = status
        return web.json_response({"errors": [message]}, status=status)

    def _batch(self, key: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            record: dict[str, Any] = {
                "path": request.path, "headers": dict(request.headers), "items": 0, "t": time.monotonic()
            }
            self.requests.append(record)
            if self.stall:
                await asyncio.sleep(self.stall)
            if self.faults:
                fault = self.faults[0]
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.pop(0)
                record["status"] = fault.status
                return web.json_response(fault.body, status=fault.status, headers=fault.headers)
            if self.api_key is not None and request.headers.get("Authorization") != self.api_key:
                return self._error(401, "bad or missing Authorization", record)
            if self.workspace is not None and request.headers.get("Comet-Workspace") != self.workspace:
                return self._error(403, "bad or missing Comet-Workspace", record)
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                return self._error(400, "body is not JSON", record)
            errors = sorted(self._validators[key].iter_errors(body), key=lambda e: list(e.path)) if self.validate else []
            if errors:
                status = 422 if any(e.validator in ("maxItems", "minItems") for e in errors) else 400
                return self._error(status, f"schema: {errors[0].message} at {list(errors[0].path)}", record)
            items = body[key]
            record["items"] = len(items)
            for item in items if self.validate else ():
                problem = self._check_item(key, item)
                if problem is not None:
                    return self._error(400, problem, record)
            if any(item.get("id") in self.refuse_ids for item in items):
                return self._error(400, "refused id (test fault)", record)
            store = self.traces if key == "traces" else self.spans
            for item in items:
                self.writes[item["id"]] += 1
                old = store.get(item["id"])
                if old is None or _parse_time(item.get("last_updated_at", "1970-01-01T00:00:00Z")) >= _parse_time(
                    old.get("last_updated_at", "1970-01-01T00:00:00Z")
                ):
                    store[item["id"]] = item
            record["status"] = 204
            return web.Response(status=204)

        return handle

    def _check_item(self, key: str, item: dict[str, Any]) -> str | None:
        kind = "Trace" if key == "traces" else "Span"
        ident = item.get("id")
        if ident is None:
            return f"{kind} id is required here (the shipper always sends one)"
        try:
            parsed = uuid.UUID(ident)
        except ValueError:
            return f"{kind} id is not a UUID"
        if parsed.version != 7:
            return f"{kind} id must be a version 7 UUID"
        for name in ("trace_id", "parent_span_id"):
            if name in item and uuid.UUID(item[name]).version != 7:
                return f"{name} must be a version 7 UUID"
        for name in ("start_time", "end_time", "last_updated_at"):
            if name in item:
                try:
                    _parse_time(item[name])
                except ValueError:
                    return f"{name} is not a date-time: {item[name]!r}"
        if len(item.get("tags", [])) > 50 or any(len(t) > 100 for t in item.get("tags", [])):
            return "too many or too long tags"
        model = self._models.get(key)
        if model is not None:
            try:
                model.model_validate(item)
            except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reported verbatim
                return f"opik {model.__name__}: {exc}"
        return None

    # -- views for assertions ----------------------------------------------------------------

    def spans_of(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in self.spans.values() if s.get("trace_id") == trace_id]

    @property
    def batch_statuses(self) -> list[int]:
        return [r.get("status", 0) for r in self.requests]


async def _serve(port: int, validate: bool) -> None:
    server = OpikContractServer(port=port, validate=validate)
    await server.up()
    print(f"opik contract server on {server.url}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Opik contract server (loopback only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-validate", action="store_true", help="skip validation (measure the client alone)")
    args = parser.parse_args()
    asyncio.run(_serve(args.port, not args.no_validate))
