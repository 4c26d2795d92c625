"""Prometheus metrics read from the ledger at scrape time (so every serving process reports the same counts)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class LedgerCollector:
    """Requests by state, the queue, retrain seconds by decision, the serving version, worker starts."""

    def __init__(self, ledger, served, supervisor) -> None:
        self.ledger, self.served, self.supervisor = ledger, served, supervisor

    def collect(self):
        ledger = self.ledger()
        by_state = GaugeMetricFamily(
            "unlearnkit_deletion_requests", "Deletion requests in the ledger, by state", labels=["state"]
        )
        counts = ledger.counts()
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "unlearnkit_queue_length",
            "Deletion requests not finished yet",
            value=sum(counts[s] for s in ("received", "planned", "running")),
        )
        seconds = CounterMetricFamily(
            "unlearnkit_retrain_seconds",
            "Seconds spent on finished deletion requests, by decision",
            labels=["decision"],
        )
        rows = ledger.db.execute(
            "SELECT decision, COALESCE(SUM(actual_seconds), 0) FROM requests WHERE state = 'done' GROUP BY decision"
        ).fetchall()
        for decision, total in rows:
            seconds.add_metric([decision or "none"], float(total))
        yield seconds
        yield GaugeMetricFamily(
            "unlearnkit_serving_version", "Model version answering predictions", value=self.served.state[0]
        )
        yield CounterMetricFamily(
            "unlearnkit_version_swaps", "New versions swapped in by this process", value=self.served.swaps
        )
        if self.supervisor is not None:
            yield CounterMetricFamily(
                "unlearnkit_worker_starts", "Deletion worker (re)starts by this process", value=self.supervisor.starts
            )
