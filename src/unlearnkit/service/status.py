# ruff: noqa: E501  (the HTML template keeps its table rows on one line each)
"""The status page at ``/``: server-rendered HTML (Jinja2, autoescaped), no script, no external asset."""

from __future__ import annotations

import numpy as np
from jinja2 import Environment

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unlearnkit - {{ dataset }} - version {{ version }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }
.done { color: #176b2c; } .failed { color: #a40000; } .running, .planned, .received { color: #8a5a00; }
.muted { color: #666; }
</style></head><body>
<h1>unlearnkit deletion service</h1>
<p>Model <code>{{ model_dir }}</code>: {{ dataset }}, {{ shards }} shards &times; {{ slices }} slices.</p>
<h2>Current version</h2>
<p id="version">Serving version {{ version }}{% if test_acc is not none %} (ensemble test accuracy {{ "%.2f"|format(test_acc) }} %){% endif %};
latest committed version {{ latest }}. Deletion worker: {{ worker }}.</p>
<h2>Queue</h2>
<p id="queue">{{ queue|length }} request(s) waiting or running.</p>
{% if queue %}<table><tr><th>request</th><th>state</th><th>mode</th><th>ids</th><th>submitted</th></tr>
{% for r in queue %}<tr><td>{{ r.id }}</td><td class="{{ r.state }}">{{ r.state }}</td><td>{{ r.decision or r.mode }}</td><td>{{ r.n_ids }}</td><td>{{ r.created }}</td></tr>
{% endfor %}</table>{% endif %}
<h2>Recent requests</h2>
{% if recent %}<table id="recent"><tr><th>request</th><th>state</th><th>decision</th><th>ids</th><th>version</th><th>took</th><th>receipt</th></tr>
{% for r in recent %}<tr><td>{{ r.id }}</td><td class="{{ r.state }}">{{ r.state }}</td><td>{{ r.decision or "-" }}</td><td>{{ r.n_ids }}</td>
<td>{{ r.parent_version if r.parent_version is not none else "-" }} &rarr; {{ r.version if r.version is not none else "-" }}</td>
<td>{{ "%.2f s"|format(r.actual_seconds) if r.actual_seconds is not none else "-" }}</td>
<td>{% if r.state in ("done", "failed") %}<a href="/v1/deletions/{{ r.id|urlencode }}/receipt">receipt</a>{% else %}-{% endif %}</td></tr>
{% endfor %}</table>{% else %}<p>No deletion requests yet.</p>{% endif %}
<h2>Pending approximate deletions</h2>
<p class="muted">Ids removed by the approximate path are folded into the next exact retrain of their shard; the service
schedules one at {{ bound.max_pending_ids }} pending ids or after {{ bound.max_pending_hours }} h.</p>
<table id="pending"><tr><th>shard</th><th>pending approximate ids</th></tr>
{% for k, n in pending %}<tr><td>{{ k }}</td><td>{{ n }}</td></tr>{% endfor %}
</table>
<p class="muted">API: <a href="/v1/openapi.json">/v1/openapi.json</a> &middot; <a href="/v1/versions">versions</a> &middot;
<a href="/v1/metrics">metrics</a></p>
</body></html>
"""

_env = Environment(autoescape=True)
_page = _env.from_string(_TEMPLATE)


def render_status(served, ledger, supervisor, config, recent: int = 20) -> str:
    from ..sisa.layout import DELETED_APPROX

    sisa = served.sisa
    number, _net, status, info = served.state
    pending = np.bincount(sisa.provenance.shard_of[status == DELETED_APPROX], minlength=sisa.shards)
    newest = ledger.db.execute("SELECT MAX(seq) FROM requests").fetchone()[0] or 0
    worker = (
        "not started by this process"
        if supervisor is None
        else (f"running (pid {supervisor.pid})" if supervisor.alive else "restarting")
    )
    return _page.render(
        model_dir=sisa.path.name,
        dataset=sisa.meta["dataset"]["name"],
        shards=sisa.shards,
        slices=sisa.slices,
        version=number,
        latest=sisa.store.current_version(),
        test_acc=(info.get("metrics") or {}).get("test_acc"),
        worker=worker,
        queue=ledger.unfinished(),
        recent=list(reversed(ledger.page(None, max(0, newest - recent), recent))),
        pending=list(enumerate(pending.tolist())),
        bound=config.bound,
    )
