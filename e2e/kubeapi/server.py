"""The HTTP face of the emulator: kube-apiserver's REST paths, verbs and wire formats.

All semantics live in :mod:`store`; this module routes requests, parses query parameters and
bodies, renders Tables for kubectl, and streams watches (newline-delimited JSON events fed
from the store's event log). It runs aiohttp on its own event loop in a background thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

from . import discovery, protobuf
from . import errors as err
from .errors import APIError
from .resources import ResourceType
from .selectors import make_filter
from .store import CRD_KEY, PATCH_TYPES, Store, WatchEvent
from .tables import table

log = logging.getLogger(__name__)

_STOP = object()
_TRUE = ("true", "1", "True")


class KubeAPI:
    """An emulated kube-apiserver on ``127.0.0.1:<free port>`` (plain HTTP, no auth)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, history: int = 10000,
                 bookmark_interval: float = 1.0) -> None:
        self.store = Store(history=history)
        self.host, self.port = host, port
        self.bookmark_interval = bookmark_interval  # idle seconds between BOOKMARKs on watches that allow them
        self.request_log: list[tuple[str, str]] = []  # (method, path) of every request served
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._watches: set[asyncio.Queue] = set()

    # -----------------------------------------------------------------------------------------
    # lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def request_count(self) -> int:
        return len(self.request_log)

    def start(self) -> KubeAPI:
        ready = threading.Event()
        failure: list[Exception] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._startup())
            except Exception as exc:  # noqa: BLE001 - reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="kubeapi", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise RuntimeError("kubeapi failed to start") from failure[0]
        return self

    async def _startup(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop, self._loop = self._loop, None
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(15)

    async def _shutdown(self) -> None:
        for queue in list(self._watches):
            queue.put_nowait(_STOP)  # ends open watches so cleanup does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def install_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Same as POSTing the CustomResourceDefinition; its resource is servable on return."""
        return self.store.create(CRD_KEY, crd)

    def write_kubeconfig(self, path: str | Path, namespace: str = "default") -> Path:
        """A kubeconfig for kubectl / kubernetes client / kopf pointing at this server."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubeapi", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "kubeapi", "user": {"token": "kubeapi-emulator-token"}}],
            "contexts": [{"name": "kubeapi", "context": {"cluster": "kubeapi", "user": "kubeapi", "namespace": namespace}}],
            "current-context": "kubeapi",
        }
        path = Path(path)
        path.write_text(yaml.safe_dump(config))
        return path

    # -----------------------------------------------------------------------------------------
    # dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.request_log.append((request.method, request.path))
        try:
            return await self._dispatch(request)
        except APIError as exc:
            return _json(exc.status(), exc.code)
        except Exception as exc:  # never let a request take the server down
            log.exception("kubeapi: %s %s failed", request.method, request.path_qs)
            failure = APIError(500, "InternalError", f'Internal error occurred: {type(exc).__name__}: {exc}')
            return _json(failure.status(), 500)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if request.path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if request.path == "/version":
            return _json(discovery.VERSION)
        if parts[:1] == ["openapi"]:
            return self._openapi(parts)
        types = self.store.resource_types()
        if parts == ["api"]:
            return _json(discovery.api_versions(f"{self.host}:{self.port}"))
        if parts == ["apis"]:
            return _json(discovery.group_list(types))
        if parts[:1] == ["apis"] and len(parts) == 2:
            return _json_or_404(discovery.group(types, parts[1]))
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _no_route()
        if not rest:
            return _json_or_404(discovery.resource_list(types, group, version))
        return await self._resource_request(request, group, version, rest)

    def _openapi(self, parts: list[str]) -> web.Response:
        types = self.store.resource_types()
        if parts == ["openapi", "v3"]:
            return _json(discovery.openapi_v3_index(types))
        if len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
            if parts[2] == "api" and len(parts) == 4:
                return _json_or_404(discovery.openapi_v3_doc(types, "", parts[3]))
            if parts[2] == "apis" and len(parts) == 5:
                return _json_or_404(discovery.openapi_v3_doc(types, parts[3], parts[4]))
        raise _no_route()

    async def _resource_request(self, request: web.Request, group: str, version: str, rest: list[str]) -> web.StreamResponse:
        watch_path = rest[0] == "watch"  # the deprecated /watch/ prefix
        if watch_path:
            rest = rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = self.store.lookup(group, version, rest[2])
            if inner is not None and inner.namespaced:
                namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _no_route()
        rtype = self.store.lookup(group, version, rest[0])
        if rtype is None or (rtype.namespaced and namespace is None and len(rest) > 1):
            raise _no_route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rtype.subresources:
            raise _no_route()
        q = request.query
        method = request.method
        if method == "GET" and name is None:
            if watch_path or q.get("watch") in _TRUE:
                return await self._watch(request, rtype, version, namespace)
            return self._list(request, rtype, version, namespace)
        if method == "GET" and sub == "log":
            return await self._log(request, namespace or "", name or "")
        if method == "GET":
            obj = self.store.get(rtype.key, namespace, name or "", version)
            if _wants_table(request):
                return _json(table(rtype, version, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")))
            return _json(obj)
        if method == "POST" and name is None:
            if namespace is None and rtype.namespaced:
                raise _no_route()
            warnings: list[str] = []
            body = await _body(request)
            created = self.store.create(rtype.key, body, namespace, version=version, field_validation=_validation(q),
                                        dry_run=_dry_run(q), warnings=warnings)
            return _json(created, 201, warnings)
        if method == "POST" and sub == "binding":
            body = await _body(request)
            target = (body.get("target") or {}) if isinstance(body, dict) else {}
            self.store.bind(namespace or "", name or "", target.get("name", ""))
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}, 201)
        if name is None and method == "DELETE":
            options = await _delete_options(request)
            deleted = self.store.delete_collection(rtype.key, namespace, q.get("labelSelector"), q.get("fieldSelector"), **options)
            return _json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(version),
                          "metadata": {"resourceVersion": self.store.resource_version}, "items": deleted})
        if name is None or sub not in (None, "status"):
            raise err.method_not_allowed()
        if method == "PUT":
            warnings = []
            updated = self.store.update(rtype.key, await _body(request), namespace, name=name, subresource=sub,
                                        version=version, field_validation=_validation(q), dry_run=_dry_run(q), warnings=warnings)
            return _json(updated, 200, warnings)
        if method == "PATCH":
            return await self._patch(request, rtype, version, namespace, name, sub)
        if method == "DELETE" and sub is None:
            return self._delete(rtype, version, namespace, name, await _delete_options(request))
        raise err.method_not_allowed()

    # -----------------------------------------------------------------------------------------
    # verbs

    def _list(self, request: web.Request, rtype: ResourceType, version: str, namespace: str | None) -> web.Response:
        q = request.query
        items, rv = self.store.list_with_version(rtype.key, namespace, q.get("labelSelector"), q.get("fieldSelector"), version)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if q.get("continue"):
            try:
                after = json.loads(base64.urlsafe_b64decode(q["continue"].encode()))
            except ValueError:
                raise err.bad_request("invalid continue token") from None
            items = [i for i in items if _sort_key(i) > tuple(after)]
        limit = _int_param(q, "limit") or 0
        if limit > 0 and len(items) > limit:
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(list(_sort_key(items[limit - 1]))).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if _wants_table(request):
            return _json(table(rtype, version, items, rv, q.get("includeObject", "Metadata"), meta))
        return _json({"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version(version), "metadata": meta, "items": items})

    async def _patch(self, request: web.Request, rtype: ResourceType, version: str, namespace: str | None,
                     name: str, sub: str | None) -> web.Response:
        q = request.query
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in PATCH_TYPES:
            raise err.unsupported_media(content_type)
        existed = self.store.try_get(rtype.key, namespace, name) is not None if PATCH_TYPES[content_type] == "apply" else True
        warnings: list[str] = []
        patched = self.store.patch(rtype.key, namespace, name, await _body(request), content_type, subresource=sub,
                                   version=version, field_manager=q.get("fieldManager"), field_validation=_validation(q),
                                   dry_run=_dry_run(q), warnings=warnings)
        return _json(patched, 200 if existed else 201, warnings)

    def _delete(self, rtype: ResourceType, version: str, namespace: str | None, name: str, options: dict[str, Any]) -> web.Response:
        last = self.store.delete(rtype.key, namespace, name, version=version, **options)
        still_there = self.store.try_get(rtype.key, namespace, name) is not None
        if rtype.return_deleted or still_there:
            return _json(last)
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": {"name": name, "group": rtype.group, "kind": rtype.plural, "uid": last["metadata"]["uid"]}})

    async def _log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        q = request.query
        pod = self.store.get("pods", namespace, name)
        container = q.get("container")
        if pod.get("status", {}).get("phase") == "Pending":
            shown = container or pod["spec"]["containers"][0]["name"]
            raise err.bad_request(f'container "{shown}" in pod "{name}" is waiting to start: ContainerCreating')
        tail = _int_param(q, "tailLines")
        text = self.store.read_log(namespace, name, container, tail)
        if q.get("follow") not in _TRUE:
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(text.encode())
        sent = len(self.store.read_log(namespace, name, container))
        while self._loop is not None:
            await asyncio.sleep(0.05)
            current = self.store.try_get("pods", namespace, name)
            full = self.store.read_log(namespace, name, container) if current else ""
            if full[sent:]:
                await response.write(full[sent:].encode())
                sent = len(full)
            if current is None or current.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                break
        await response.write_eof()
        return response

    # -----------------------------------------------------------------------------------------
    # watch

    async def _watch(self, request: web.Request, rtype: ResourceType, version: str, namespace: str | None) -> web.StreamResponse:
        q = request.query
        keep = make_filter(q.get("labelSelector"), q.get("fieldSelector"), rtype.field_selectors)
        bookmarks = q.get("allowWatchBookmarks") in _TRUE
        as_table = _wants_table(request)
        timeout = _int_param(q, "timeoutSeconds")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def matches(obj: dict[str, Any] | None) -> bool:
            return obj is not None and (namespace is None or obj["metadata"].get("namespace") == namespace) and keep(obj)

        def on_event(event: WatchEvent) -> None:
            if event.key == rtype.key:
                loop.call_soon_threadsafe(queue.put_nowait, event)

        since = q.get("resourceVersion") or ""
        initial: list[dict[str, Any]] = []
        backlog: list[WatchEvent] = []
        gone: APIError | None = None
        with self.store.lock:  # snapshot and subscription together: no event is lost or doubled
            if since in ("", "0") or q.get("sendInitialEvents") in _TRUE:
                initial = [o for o in self.store.list(rtype.key, namespace, version=version) if matches(o)]
                start_rv = self.store.resource_version
            else:
                try:
                    backlog = [e for e in self.store.events_since(_int(since)) if e.key == rtype.key]
                except APIError as exc:
                    gone = exc
                start_rv = since
            if gone is None:
                self.store.subscribe(on_event)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            if as_table and kind in ("ADDED", "MODIFIED", "DELETED"):
                obj = table(rtype, version, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata"))
            await response.write(json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n")

        async def send_event(event: WatchEvent) -> None:
            before, after = matches(event.old), matches(event.object)
            kind, obj = event.type, event.object
            if kind == "MODIFIED" and before != after:
                # Moved into / out of the selection; leaving shows the old state (as the watch cache does).
                kind, obj = ("ADDED", obj) if after else ("DELETED", event.old or obj)
            if (after if kind != "DELETED" else (before or after)):
                obj = dict(obj, apiVersion=rtype.api_version(version))
                obj["metadata"] = dict(obj["metadata"], resourceVersion=event.object["metadata"]["resourceVersion"])
                await send(kind, obj)

        def bookmark(rv: str, initial_end: bool = False) -> dict[str, Any]:
            meta: dict[str, Any] = {"resourceVersion": rv}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"kind": rtype.kind, "apiVersion": rtype.api_version(version), "metadata": meta}

        self._watches.add(queue)
        try:
            if gone is not None:
                await send("ERROR", gone.status())
                return response
            for obj in initial:
                await send("ADDED", obj)
            if q.get("sendInitialEvents") in _TRUE and bookmarks:
                await send("BOOKMARK", bookmark(start_rv, initial_end=True))
            for event in backlog:
                await send_event(event)
            deadline = loop.time() + timeout if timeout else None
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if bookmarks:
                        with self.store.lock:
                            # Queued behind every event committed so far, so the RV is safe to resume from.
                            loop.call_soon(queue.put_nowait, ("BOOKMARK", self.store.resource_version))
                    continue
                if item is _STOP:
                    break
                if isinstance(item, tuple):
                    await send("BOOKMARK", bookmark(item[1]))
                else:
                    await send_event(item)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            self.store.unsubscribe(on_event)
            self._watches.discard(queue)
        try:
            await response.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return response


# ---------------------------------------------------------------------------------------------
# helpers


def _json(obj: Any, status: int = 200, warnings: list[str] | None = None) -> web.Response:
    response = web.Response(body=json.dumps(obj, separators=(",", ":")).encode(), status=status,
                            content_type="application/json")
    for text in warnings or []:
        response.headers.add("Warning", "299 - " + json.dumps(text))
    return response


def _json_or_404(obj: dict[str, Any] | None) -> web.Response:
    if obj is None:
        raise _no_route()
    return _json(obj)


def _no_route() -> APIError:
    return APIError(404, "NotFound", "the server could not find the requested resource", {})


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise err.bad_request(f"invalid resource version: {text!r}") from None


def _int_param(q: Any, name: str) -> int | None:
    if not q.get(name):
        return None
    try:
        return int(q[name])
    except ValueError:
        raise err.bad_request(f"invalid value for {name}: {q[name]!r}") from None


def _validation(q: Any) -> str:
    return q.get("fieldValidation") or "Warn"


def _dry_run(q: Any) -> bool:
    values = q.getall("dryRun", [])
    if any(v != "All" for v in values):
        raise err.bad_request(f"unsupported dryRun value(s): {values}")
    return bool(values)


def _sort_key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        raise err.bad_request("the request body is empty")
    content_type = request.headers.get("Content-Type", "")
    if "protobuf" in content_type:
        try:
            return protobuf.decode(raw)
        except (protobuf.ProtobufError, UnicodeDecodeError) as exc:
            raise APIError(415, "UnsupportedMediaType", f"cannot decode the protobuf body: {exc}") from None
    if "cbor" in content_type:
        raise err.unsupported_media(content_type)
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise err.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


async def _delete_options(request: web.Request) -> dict[str, Any]:
    q = request.query
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise err.bad_request(f"invalid DeleteOptions: {exc}") from None
    if not isinstance(body, dict):
        raise err.bad_request("invalid DeleteOptions: not an object")
    grace = q.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))
    policy = q.get("propagationPolicy") or body.get("propagationPolicy")
    orphan = q.get("orphanDependents", body.get("orphanDependents"))
    if policy is None and orphan is not None:
        policy = "Orphan" if str(orphan).lower() == "true" else "Background"
    dry = _dry_run(q) or bool(body.get("dryRun"))
    try:
        grace_seconds = None if grace is None else int(grace)
    except ValueError:
        raise err.bad_request(f"invalid gracePeriodSeconds: {grace!r}") from None
    return {"grace_period_seconds": grace_seconds, "propagation_policy": policy,
            "preconditions": body.get("preconditions"), "dry_run": dry}
