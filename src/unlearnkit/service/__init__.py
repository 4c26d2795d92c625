"""The deletion service (docs/service.md): ``unlearnkit serve`` runs an HTTP API over one SISA model directory
that answers predictions from the current version, records deletion requests in the model's ledger, runs them
in a worker process beside serving, and returns signed receipts.

* ``app.py``: the FastAPI application (routes, limits, error format), the served version and its swap;
* ``worker.py``: the deletion worker process, its supervisor, and the fold bound for approximate deletions;
* ``tokens.py``: API tokens with scopes, stored as HMAC-SHA256 hashes; ``keys.py``: the signing key and secrets;
* ``receipts.py``: Ed25519-signed receipts and their verification; ``status.py``: the HTML status page;
  ``metrics.py``: Prometheus metrics. The commands ``serve``, ``tokens`` and ``receipts`` are in ``cli/service.py``.
"""
