"""The HTTP API (FastAPI): predictions from the current version, deletion requests into the ledger, receipts.

:func:`create_app` builds the application over one SISA model directory; ``unlearnkit serve`` runs it with
uvicorn and, beside it, the deletion worker (:mod:`unlearnkit.service.worker`). Routes, error format, limits
and scopes are documented in ``docs/service.md``; ``/v1/openapi.json`` is the machine-readable form.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from fastapi import Depends, FastAPI, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UnlearnKitError
from .tokens import Token, TokenStore
from .worker import FoldBound, WorkerSupervisor

API = "/v1"


@dataclass
class ServeConfig:
    model_dir: str
    max_batch: int = 256  # inputs per prediction request
    max_body_bytes: int = 8 << 20  # larger request bodies are refused (413)
    max_ids: int = 10_000  # ids per deletion request (422 above)
    bound: FoldBound = field(default_factory=FoldBound)
    worker: bool = True  # start and supervise the deletion worker in this process
    worker_threads: int = 1
    device: str = "cpu"
    poll_seconds: float = 0.2  # how often the serving process looks for a new version
    worker_pid_file: str | None = None

    def to_env(self) -> str:
        return json.dumps({**self.__dict__, "bound": self.bound.to_dict()})

    @classmethod
    def from_env(cls, text: str) -> "ServeConfig":
        values = json.loads(text)
        values["bound"] = FoldBound(**values["bound"])
        return cls(**values)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


# -- the model being served ------------------------------------------------------------------------------
class Served:
    """The current version's ensemble; replaced atomically (one reference) when a newer version commits."""

    def __init__(self, model_dir: str, poll_seconds: float) -> None:
        from ..sisa.model import SisaModel

        self.model_dir = model_dir
        self.sisa = SisaModel.open(model_dir)
        self.poll_seconds = poll_seconds
        self.state = self._load(self.sisa.store.current_version())  # (number, ensemble, status, info)
        self.loaded_at = time.time()
        self.swaps = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="unlearnkit-version-watch", daemon=True)

    def _load(self, number: int):
        version = self.sisa.store.read_version(number)  # verifies the files' hashes
        net = self.sisa.ensemble(version)
        return number, net, version.status, version.info

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh(self) -> bool:
        newest = self.sisa.store.current_version()
        if newest == self.state[0]:
            return False
        from ..sisa.model import SisaModel

        self.sisa = SisaModel.open(self.model_dir)  # calibration and shard accuracies may have been updated
        self.state = self._load(newest)  # the swap: predictions already running keep the ensemble they took
        self.swaps += 1
        self.loaded_at = time.time()
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                self.error = None
            except UnlearnKitError as exc:  # keep serving the loaded version; readiness reports it
                self.error = str(exc)


# -- request bodies --------------------------------------------------------------------------------------
class TensorB64(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dtype: Literal["float32", "uint8"] = Field(description="float32 in [0, 1], or uint8 in [0, 255]")
    shape: list[StrictInt] = Field(description="[B, C, H, W] (or [B, H, W] for one channel)")
    data: StrictStr = Field(description="base64 of the raw little-endian array, C order")


class PredictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: Optional[list] = Field(
        None, description="nested JSON arrays [B][C][H][W], [B][H][W] or [B][C*H*W], pixels in [0, 1]"
    )
    tensor: Optional[TensorB64] = None
    probabilities: bool = Field(False, description="also return every class probability")


class DeletionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: Optional[list[StrictInt]] = Field(None, description="training-set sample ids to delete")
    spec: Optional[StrictStr] = Field(None, description="or a request spec the model knows: random:FRACTION or class:C")
    seed: StrictInt = Field(0, description="seed of a random: spec")
    mode: Literal["auto", "exact", "approx"] = "auto"
    deadline: Optional[Union[StrictFloat, StrictInt, StrictStr]] = Field(
        None,
        description="seconds from now, or an ISO 8601 time: in auto mode, exact retraining is chosen only if "
        "its estimate (after the queue) meets it",
    )


# -- the application -------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes are refused with 413 before they are read in full."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = error_response(413, f"the request body is larger than {self.limit} bytes")
        if length is not None:
            try:
                if int(length) > self.limit:
                    return await too_big(scope, receive, send)
            except ValueError:
                return await error_response(400, "bad Content-Length header")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await too_big(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(config: ServeConfig) -> FastAPI:
    """The application; refuses (``UnlearnKitError``) a damaged model directory or ledger."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from ..hybrid import Ledger
    from .metrics import LedgerCollector
    from .status import render_status

    model_dir = str(Path(config.model_dir))
    served = Served(model_dir, config.poll_seconds)
    check_ledger(model_dir)
    tokens = TokenStore(model_dir)
    tokens.list()  # a corrupted token file is refused at start
    from .keys import Signer

    signer = Signer.load_or_create(model_dir)
    local = threading.local()

    def ledger() -> Ledger:
        if getattr(local, "ledger", None) is None:
            local.ledger = Ledger(served.sisa.store.ledger_path)
        return local.ledger

    supervisor = (
        WorkerSupervisor(model_dir, config.bound, config.device, config.worker_threads, config.worker_pid_file)
        if config.worker
        else None
    )
    registry = CollectorRegistry()
    latency = Histogram(
        "unlearnkit_prediction_seconds",
        "Prediction request latency (model time, seconds)",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        registry=registry,
    )
    predictions = Counter(
        "unlearnkit_predictions", "Inputs predicted, by the version that answered", ["version"], registry=registry
    )
    registry.register(LedgerCollector(ledger, served, supervisor))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        served.start()
        if supervisor is not None:
            supervisor.start()
        yield
        served.stop()
        if supervisor is not None:
            supervisor.stop()

    app = FastAPI(
        title="unlearnkit deletion service",
        version="1",
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        description="Predictions from the current model version, deletion requests, receipts (docs/service.md).",
    )
    app.state.served, app.state.supervisor, app.state.config = served, supervisor, config

    # -- errors: one JSON shape, never a traceback --------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(
            exc.status_code, message.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "the request body is not valid JSON")
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return error_response(422, f"{where}: {first.get('msg', 'invalid')}{more}")

    @app.exception_handler(UnlearnKitError)
    async def _unlearnkit_error(_request, exc: UnlearnKitError):
        return error_response(422, str(exc))

    @app.exception_handler(Exception)
    async def _bug(_request, exc: Exception):  # a bug: logged by uvicorn, never shown to the client
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    # -- auth -----------------------------------------------------------------------------------------
    def require(scope: str):
        def check(authorization: Optional[str] = Header(None, include_in_schema=False)) -> Token:
            challenge = {"WWW-Authenticate": 'Basic realm="unlearnkit", Bearer realm="unlearnkit"'}
            if not authorization:
                raise ApiError(401, "no API token: send `Authorization: Bearer <token>`", challenge)
            kind, _, value = authorization.partition(" ")
            presented = None
            if kind.lower() == "bearer":
                presented = value.strip()
            elif kind.lower() == "basic":  # a browser: any user name, the token as password
                try:
                    presented = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
                except (binascii.Error, UnicodeDecodeError):
                    presented = None
            token = tokens.check(presented) if presented else None
            if token is None:
                raise ApiError(401, "the API token is unknown, malformed or revoked", challenge)
            if not token.allows(scope):
                raise ApiError(403, f"this token's scopes ({', '.join(token.scopes)}) do not include {scope!r}")
            return token

        return Depends(check)

    # -- routes -----------------------------------------------------------------------------------------
    @app.get(f"{API}/health")
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(f"{API}/ready")
    def ready():
        """Readiness: the ledger opens, a version is loaded, the worker runs."""
        problems = []
        try:
            ledger().counts()
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure
            problems.append(f"ledger: {exc}")
        if served.error:
            problems.append(f"model: {served.error}")
        if supervisor is not None and not supervisor.alive:
            problems.append("the deletion worker is not running (it is being restarted)")
        body = {
            "ready": not problems,
            "version": served.state[0],
            "problems": problems,
            "worker": None
            if supervisor is None
            else {"pid": supervisor.pid, "alive": supervisor.alive, "starts": supervisor.starts},
        }
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.post(f"{API}/predict")
    def predict(body: PredictBody, _token: Token = require("predict")) -> dict:
        """Predictions of the current version (the response names it)."""
        x = _inputs(body, served, config.max_batch)
        number, net, _status, _info = served.state  # one reference: the version that answers this request
        started = time.perf_counter()
        with torch.inference_mode():
            probs = torch.exp(net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x))
        latency.observe(time.perf_counter() - started)
        predictions.labels(str(number)).inc(int(x.shape[0]))
        out = {"version": number, "predictions": probs.argmax(1).tolist()}
        if body.probabilities:
            out["probabilities"] = [[round(float(p), 6) for p in row] for row in probs]
        return out

    @app.post(f"{API}/deletions", status_code=202)
    def submit(
        body: DeletionBody, idempotency_key: Optional[str] = Header(None), _token: Token = require("delete")
    ) -> JSONResponse:
        """Record a deletion request; 202 with its id and the plan as the planner sees it now."""
        return _submit(body, idempotency_key, served, ledger(), config)

    @app.get(f"{API}/deletions")
    def list_deletions(
        state: Optional[Literal["received", "planned", "running", "done", "failed"]] = None,
        after: int = Query(0, ge=0, description="return requests after this seq (paging cursor)"),
        limit: int = Query(50, ge=1, le=500),
        _token: Token = require("read"),
    ) -> dict:
        records = ledger().page(None if state is None else (state,), after, limit)
        return {
            "requests": [_public(r) for r in records],
            "next_after": records[-1].seq if len(records) == limit else None,
        }

    @app.get(f"{API}/deletions/{{request_id}}")
    def show_deletion(request_id: str, _token: Token = require("read")) -> dict:
        record = _find(ledger(), request_id)
        return {**_public(record), "events": ledger().events(record.id)}

    @app.get(f"{API}/deletions/{{request_id}}/receipt")
    def receipt(request_id: str, _token: Token = require("read")) -> dict:
        from .receipts import build_receipt, sign_receipt

        record = _find(ledger(), request_id)
        if not record.finished:
            raise ApiError(
                409, f"request {request_id!r} is {record.state}; its receipt exists once it is done or failed"
            )
        return sign_receipt(build_receipt(served.sisa, ledger(), record, config.bound.to_dict()), signer)

    @app.get(f"{API}/versions")
    def list_versions(_token: Token = require("read")) -> dict:
        store = served.sisa.store
        out = []
        for number in store.version_numbers():
            info = store.read_version_info(number)
            out.append(
                {
                    "version": number,
                    "request_id": info.get("request_id"),
                    "decision": info.get("decision"),
                    "created": info.get("created"),
                    "weights_sha256": (info.get("files") or {}).get("weights.safetensors"),
                    "test_acc": (info.get("metrics") or {}).get("test_acc"),
                    "pending_approx": sum(int(s.get("pending_approx", 0)) for s in info.get("shards", [])),
                }
            )
        return {"current": store.current_version(), "serving": served.state[0], "versions": out}

    @app.get(f"{API}/metrics")
    def metrics(_token: Token = require("read")) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    def status_page(_token: Token = require("read")) -> HTMLResponse:
        return HTMLResponse(render_status(served, ledger(), supervisor, config))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    return BodyLimit(app, config.max_body_bytes) if config.max_body_bytes else app


def check_ledger(model_dir: str) -> None:
    """Refuse a ledger that does not open or whose hash chain is broken (the CLI's messages)."""
    from ..hybrid import Ledger
    from ..sisa.store import LEDGER

    ledger = Ledger(Path(model_dir) / LEDGER)
    try:
        report = ledger.verify()
    finally:
        ledger.close()
    if not report.ok:
        raise UnlearnKitError(
            f"the request ledger of {model_dir} fails verification: {report.problem} (see `unlearnkit requests verify`)"
        )


def app_from_env() -> Any:
    """uvicorn factory for several worker processes (``unlearnkit serve --http-workers N``)."""
    return create_app(ServeConfig.from_env(os.environ["UNLEARNKIT_SERVE_CONFIG"]))


# -- helpers ---------------------------------------------------------------------------------------------
def _inputs(body: PredictBody, served: Served, max_batch: int) -> torch.Tensor:
    args = served.sisa.meta["model"]["args"]
    channels, size = int(args.get("in_channels", 1)), int(args.get("image_size", 0) or 0)
    if (body.inputs is None) == (body.tensor is None):
        raise ApiError(422, "give exactly one of inputs (JSON arrays) or tensor (base64)")
    if body.tensor is not None:
        t = body.tensor
        if not t.shape or any(d < 1 for d in t.shape) or len(t.shape) not in (2, 3, 4):
            raise ApiError(422, "tensor.shape must be 2 to 4 positive sizes")
        if t.shape[0] > max_batch:
            raise ApiError(422, f"at most {max_batch} inputs per request (got {t.shape[0]})")
        itemsize = 4 if t.dtype == "float32" else 1
        expected = math.prod(t.shape) * itemsize
        try:
            raw = base64.b64decode(t.data, validate=True)
        except binascii.Error:
            raise ApiError(422, "tensor.data is not valid base64") from None
        if len(raw) != expected:
            raise ApiError(422, f"tensor.data holds {len(raw)} bytes; shape {t.shape} of {t.dtype} needs {expected}")
        array = np.frombuffer(raw, dtype="<f4" if t.dtype == "float32" else np.uint8).reshape(t.shape)
        x = torch.from_numpy(array.astype(np.float32) / (255.0 if t.dtype == "uint8" else 1.0))
    else:
        if not isinstance(body.inputs, list) or not body.inputs:
            raise ApiError(422, "inputs must be a non-empty list of images")
        if len(body.inputs) > max_batch:
            raise ApiError(422, f"at most {max_batch} inputs per request (got {len(body.inputs)})")
        try:
            array = np.asarray(body.inputs, dtype=np.float32)
        except (ValueError, TypeError):
            raise ApiError(422, "inputs must be numbers in equally shaped nested lists") from None
        x = torch.from_numpy(array)
    if not torch.isfinite(x).all():
        raise ApiError(422, "inputs must be finite numbers")
    n = x.shape[0]
    per_image = channels * size * size if size else None
    if per_image and x[0].numel() != per_image:
        raise ApiError(
            422, f"each input must hold {channels} x {size} x {size} = {per_image} values (got {x[0].numel()})"
        )
    if size:
        x = x.reshape(n, channels, size, size)
    return x


def _find(ledger, request_id: str):
    record = ledger.find(request_id)
    if record is None:
        raise ApiError(404, f"no deletion request {request_id!r}")
    return record


def _public(record) -> dict:
    out = record.to_dict()
    out.pop("source", None)
    return out


def _body_digest(body: DeletionBody) -> str:
    return hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()


def _deadline_seconds(deadline, now: _dt.datetime) -> tuple[float | None, str | None]:
    if deadline is None:
        return None, None
    if isinstance(deadline, str):
        try:
            at = _dt.datetime.fromisoformat(deadline)
        except ValueError:
            raise ApiError(422, f"deadline {deadline!r} is neither seconds nor an ISO 8601 time") from None
        if at.tzinfo is None:
            raise ApiError(422, "an ISO 8601 deadline needs a time zone (e.g. +00:00)")
        seconds = (at - now).total_seconds()
    else:
        seconds = float(deadline)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ApiError(422, "the deadline must lie in the future")
    return seconds, (now + _dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _submit(body: DeletionBody, key: str | None, served: Served, ledger, config: ServeConfig) -> JSONResponse:
    from ..hybrid import ApproxSettings, Calibration, Policy, make_plan, validate_ids

    if key is not None and (
        not key or len(key) > 200 or not key.isprintable() or any(c.isspace() or c in "/?#%" for c in key)
    ):
        raise ApiError(
            400,
            "Idempotency-Key must be 1-200 printable characters without spaces, '/', '?', '#' or '%' "
            "(it becomes the request id, part of its URL)",
        )
    digest = _body_digest(body)
    if key is not None:
        existing = ledger.find(key)
        if existing is not None:
            return _replay(existing, digest)
    sisa = served.sisa
    if (body.ids is None) == (body.spec is None):
        raise ApiError(422, "give exactly one of ids (a list of sample ids) or spec (random:FRACTION or class:C)")
    if body.ids is not None:
        if len(body.ids) > config.max_ids:
            raise ApiError(422, f"at most {config.max_ids} ids per request (got {len(body.ids)}); split the request")
        if any(not (-(2**63) <= i < 2**63) for i in body.ids):
            raise ApiError(422, "ids must be 64-bit integers")
        ids = np.asarray(body.ids, dtype=np.int64)
    else:
        if not body.spec.startswith(("random:", "class:")):
            raise ApiError(422, "spec must be random:FRACTION or class:C (id files are not read over the API)")
        from ..hybrid import ids_from_request

        ids, _ = ids_from_request(sisa, spec=body.spec, seed=body.seed)
        if ids.size > config.max_ids:
            raise ApiError(422, f"{body.spec} selects {ids.size} ids, more than {config.max_ids} per request")
    ids = validate_ids(ids, sisa.provenance)  # UnlearnKitError -> 422
    now = _dt.datetime.now(_dt.timezone.utc)
    seconds, deadline_at = _deadline_seconds(body.deadline, now)
    stored = sisa.meta.get("hybrid") or {}
    number, _net, status, _info = served.state
    plan = make_plan(
        ids,
        sisa.provenance,
        status,
        epochs=sisa.config.epochs,
        workers=sisa.workers,
        cal=Calibration.from_dict(sisa.meta.get("calibration")),
        policy=Policy(**stored.get("policy", {})),
        approx=ApproxSettings(**stored.get("approx", {})),
        mode=body.mode,
    )
    queued = ledger.unfinished()
    queue_seconds = sum(r.estimated_seconds or 0.0 for r in queued)
    mode, note = body.mode, None
    deadline = None
    if seconds is not None:
        chosen = plan.chosen
        finish = queue_seconds + (chosen.seconds if chosen is not None else 0.0)
        if body.mode == "auto" and plan.decision == "exact" and finish > seconds and plan.approx is not None:
            mode, note = (
                "approx",
                (
                    f"the deadline ({seconds:.0f} s) is shorter than the queue ({queue_seconds:.1f} s) plus "
                    f"exact retraining ({plan.exact.seconds:.1f} s): the approximate path was chosen"
                ),
            )
            finish = queue_seconds + plan.approx.seconds
        deadline = {"at": deadline_at, "estimated_seconds_to_finish": round(finish, 3), "feasible": finish <= seconds}
    source = json.dumps({"api_body_sha256": digest, "deadline": deadline_at, "mode_asked": body.mode}, sort_keys=True)
    record, created = ledger.submit(ids, key, mode, source)
    if not created:  # a concurrent request with the same key won the race
        return _replay(record, digest)
    plan_out = plan.to_dict()
    if note:
        plan_out.update(decision="approx", reason=note)
    return JSONResponse(
        {
            "id": record.id,
            "state": record.state,
            "mode": record.mode,
            "n_ids": record.n_ids,
            "ids_sha256": record.ids_sha256,
            "plan": plan_out,
            "planned_against_version": number,
            "queued_before": len(queued),
            "deadline": deadline,
            "note": "the plan is made again against the model version current when the request runs",
        },
        status_code=202,
    )


def _replay(existing, digest: str) -> JSONResponse:
    try:
        source = json.loads(existing.source or "{}")
    except json.JSONDecodeError:
        source = {}
    if not isinstance(source, dict) or source.get("api_body_sha256") != digest:
        raise ApiError(
            409,
            f"Idempotency-Key {existing.id!r} was used for another request body "
            f"({existing.n_ids} ids, {existing.state}); use a new key",
        )
    return JSONResponse(
        {
            "id": existing.id,
            "state": existing.state,
            "mode": existing.mode,
            "n_ids": existing.n_ids,
            "ids_sha256": existing.ids_sha256,
            "plan": existing.plan,
            "replayed": True,
        },
        status_code=202,
    )
