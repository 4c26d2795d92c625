"""A Python client for the deletion service (``unlearnkit serve``)::

    from unlearnkit.client import Client

    with Client("http://127.0.0.1:8080", token) as client:
        print(client.predict(images)["predictions"])        # images: array-like [B, C, H, W] in [0, 1]
        request = client.delete([17, 4242], mode="auto")      # 202: id and plan
        record = client.wait(request["id"], timeout=600)       # until done or failed
        receipt = client.receipt(request["id"])                # signed JSON; `unlearnkit receipts verify`

Every call raises :class:`ServiceError` (an ``UnlearnKitError``) with the server's message on an error status.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any, Iterable

import httpx
import numpy as np

from .errors import UnlearnKitError


class ServiceError(UnlearnKitError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}" if status else message)
        self.status = status


class Client:
    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UnlearnKitError(f"server URL {url!r} must start with http:// or https://")
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {token.strip()}"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceError(0, f"cannot reach {self.http.base_url}{path}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ServiceError(response.status_code, message)
        return response.json()

    # -- the API -------------------------------------------------------------------------------------
    def predict(self, inputs, probabilities: bool = False) -> dict:
        """Predictions of the current version for a batch (sent as a base64 float32 tensor)."""
        array = np.ascontiguousarray(np.asarray(inputs, dtype="<f4"))
        body = {
            "tensor": {
                "dtype": "float32",
                "shape": list(array.shape),
                "data": base64.b64encode(array.tobytes()).decode(),
            },
            "probabilities": probabilities,
        }
        return self._call("POST", "/v1/predict", json=body)

    def delete(
        self,
        ids: Iterable[int],
        mode: str = "auto",
        deadline: float | str | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """Submit a deletion request (202): its id, state and plan. The key makes a retry safe."""
        body: dict[str, Any] = {"ids": [int(i) for i in ids], "mode": mode}
        if deadline is not None:
            body["deadline"] = deadline
        key = idempotency_key or f"c-{uuid.uuid4().hex}"
        return self._call("POST", "/v1/deletions", json=body, headers={"Idempotency-Key": key})

    def request(self, request_id: str) -> dict:
        return self._call("GET", f"/v1/deletions/{_quote(request_id)}")

    def requests(self, state: str | None = None, after: int = 0, limit: int = 50) -> dict:
        params = {"after": after, "limit": limit, **({"state": state} if state else {})}
        return self._call("GET", "/v1/deletions", params=params)

    def wait(self, request_id: str, timeout: float = 600.0, poll: float = 0.5) -> dict:
        """The request's record once it is done or failed (``ServiceError`` after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.request(request_id)
            if record["state"] in ("done", "failed"):
                return record
            if time.monotonic() > deadline:
                raise ServiceError(0, f"request {request_id!r} is still {record['state']} after {timeout:g} s")
            time.sleep(poll)

    def receipt(self, request_id: str) -> dict:
        return self._call("GET", f"/v1/deletions/{_quote(request_id)}/receipt")

    def versions(self) -> dict:
        return self._call("GET", "/v1/versions")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
