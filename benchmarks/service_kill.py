"""Kill test of the deletion service: SIGKILL the server (and, separately, its worker) at random moments
under a bounded load of concurrent predictions and deletions on loopback, restart, and check that nothing
accepted was lost or applied twice.

    PYTHONPATH=src python benchmarks/service_kill.py                        # 10 server + 10 worker kills
    PYTHONPATH=src python benchmarks/service_kill.py --kills 2 --worker-kills 2 --requests 6 --out /tmp/k

A tiny digits SISA model (2 shards x 3 slices, MLP) is trained once. `unlearnkit serve` runs over a copy of
it while two threads send predictions and one thread submits ``--requests`` deletion requests (disjoint ids,
exact and approximate alternating, each with an Idempotency-Key, retried with the same key until it gets a
202); a killer thread SIGKILLs the server or the worker process at uniformly random moments. After the last
kill the server runs until every request is finished. Then:

* every request that got a 202 is in the ledger exactly once, ``done``, with exactly one ``done`` event,
  and exactly one model version names it;
* the final weights equal those of an uninterrupted run: the same requests, in the ledger's order, through
  ``unlearnkit.hybrid.Unlearner`` on a fresh copy of the model, compared tensor by tensor;
* no artefact trained on deleted ids remains: every stage checkpoint's history key is one of the current
  histories (which exclude every deleted id), no superseded version keeps its weights (unless the model's
  retention setting keeps them), no ``.tmp-*`` leftovers;
* the ledger's hash chain verifies.

Writes results.json and README.md to --out (default benchmarks/results/service/kill).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from service_helpers import Server, _alive, make_token, train_tiny  # noqa: E402
from unlearnkit.hybrid import Ledger, Unlearner  # noqa: E402
from unlearnkit.results import machine, versions, write_json_atomic, write_text_atomic  # noqa: E402
from unlearnkit.sisa import SisaModel  # noqa: E402


def leftover_artefacts(model: Path) -> dict:
    """Files under the model directory that were trained on ids the current version has deleted."""
    sisa = SisaModel.open(model)
    version = sisa.version()
    keep = sisa.reachable_stages(version.status)
    stale_stages = []
    for shard_dir in sorted((model / "stages").glob("shard-*")):
        for stage_dir in sorted(shard_dir.iterdir()):
            if stage_dir not in keep:
                stale_stages.append(str(stage_dir.relative_to(model)))
    removed = version.status != 0
    superseded = []
    for number in sisa.store.version_numbers():
        folder = sisa.store.version_dir(number)
        if number != version.number and (folder / "weights.safetensors").exists():
            old = sisa.store.read_version(number).status != 0
            if (removed & ~old).any():  # it still holds ids deleted since
                superseded.append(str(folder.relative_to(model)))
    temporaries = [str(p.relative_to(model)) for p in model.rglob(".tmp-*")]
    return {
        "stale_stage_checkpoints": stale_stages,
        "superseded_versions_with_weights": superseded,
        "temporaries": temporaries,
    }


def run(args) -> dict:
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    trained = train_tiny(work / "trained")
    model, reference = work / "killed" / "model", work / "reference" / "model"
    shutil.copytree(trained, model)
    shutil.copytree(trained, reference)
    token = make_token(model, "admin", "kill-test")
    prov = SisaModel.open(model).provenance
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(prov.n, size=3 * args.requests, replace=False)
    requests = [
        {
            "key": f"kill-{i:03d}",
            "ids": sorted(int(v) for v in chosen[3 * i : 3 * i + 3]),
            "mode": "exact" if i % 2 == 0 else "approx",
        }
        for i in range(args.requests)
    ]
    x = SisaModel.open(model).data.x_test[:8].tolist()

    server = Server(model, log=work / "server.log").start()
    stop = threading.Event()
    accepted: dict[str, dict] = {}
    counters = {"predictions_ok": 0, "predictions_refused_while_down": 0, "predictions_failed": 0, "submit_attempts": 0}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}

    def predictor() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{server.url}/v1/predict", json={"inputs": x})
                except httpx.HTTPError:
                    with lock:
                        counters["predictions_refused_while_down"] += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    counters["predictions_ok" if response.status_code == 200 else "predictions_failed"] += 1
                time.sleep(0.02)

    def submitter() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            for request in requests:
                while not stop.is_set():
                    with lock:
                        counters["submit_attempts"] += 1
                    try:
                        response = http.post(
                            f"{server.url}/v1/deletions",
                            json={"ids": request["ids"], "mode": request["mode"]},
                            headers={"Idempotency-Key": request["key"]},
                        )
                    except httpx.HTTPError:
                        time.sleep(0.1)
                        continue
                    if response.status_code == 202:
                        accepted[request["key"]] = response.json()
                        break
                    raise RuntimeError(f"deletion {request['key']} answered {response.status_code}: {response.text}")
                time.sleep(rng.uniform(0.1, 0.6))

    threads = [threading.Thread(target=predictor, daemon=True) for _ in range(2)] + [
        threading.Thread(target=submitter, daemon=True)
    ]
    for t in threads:
        t.start()
    killer = random.Random(args.seed)
    plan = ["server"] * args.kills + ["worker"] * args.worker_kills
    killer.shuffle(plan)
    trials = []
    for number, target in enumerate(plan, 1):
        time.sleep(killer.uniform(args.min_wait, args.max_wait))
        # land the kill while a request is being worked on: wait (bounded) until one is running, then a random delay
        waited = time.monotonic() + 120
        while time.monotonic() < waited:
            probe = Ledger(model / "ledger.sqlite")
            running = any(r.state == "running" for r in probe.unfinished())
            probe.close()
            if running:
                time.sleep(killer.uniform(0.0, args.in_work_delay))
                break
            time.sleep(0.05)
        ledger = Ledger(model / "ledger.sqlite")
        unfinished = [(r.id, r.state) for r in ledger.unfinished()]
        done = ledger.counts()["done"]
        ledger.close()
        trial = {
            "trial": number,
            "target": target,
            "at_accepted": len(accepted),
            "at_done": done,
            "in_flight": unfinished,
        }
        if target == "server":
            server.kill()
            started = time.monotonic()
            server.start()
            trial["restart_seconds"] = round(time.monotonic() - started, 2)
        else:
            pid = server.worker_pid()
            if pid is not None and _alive(pid):
                import os
                import signal

                os.kill(pid, signal.SIGKILL)
                trial["worker_pid"] = pid
            else:
                trial["worker_pid"] = None
        trials.append(trial)
        print(
            f"kill {number}/{len(plan)}: {target}, {len(unfinished)} request(s) in flight", file=sys.stderr, flush=True
        )
    threads[-1].join(timeout=args.drain_seconds)
    deadline = time.monotonic() + args.drain_seconds
    with httpx.Client(headers=headers, timeout=30) as http:
        while time.monotonic() < deadline:
            listing = http.get(f"{server.url}/v1/deletions", params={"limit": 500}).json()["requests"]
            if len(accepted) == len(requests) and all(r["state"] in ("done", "failed") for r in listing):
                break
            time.sleep(0.5)
    stop.set()
    for t in threads[:-1]:
        t.join(timeout=30)
    server.stop()

    # -- checks --------------------------------------------------------------------------------------
    ledger = Ledger(model / "ledger.sqlite")
    records = ledger.list()
    chain = ledger.verify()
    done_events = {r.id: sum(1 for e in ledger.events(r.id) if e["state"] == "done") for r in records}
    ledger.close()
    by_id = {r.id: r for r in records}
    store = SisaModel.open(model).store
    made_by: dict[str, int] = {}
    for number in store.version_numbers():
        request_id = store.read_version_info(number).get("request_id")
        if request_id:
            made_by[request_id] = made_by.get(request_id, 0) + 1
    lost = [k for k in accepted if k not in by_id]
    not_done = [k for k in accepted if k in by_id and by_id[k].state != "done"]
    twice = [k for k in accepted if done_events.get(k, 0) != 1 or made_by.get(k, 0) != 1]
    # the uninterrupted run: the same requests in the ledger's order
    torch.set_num_threads(1)
    with Unlearner(reference) as unlearner:
        for record in records:
            unlearner.forget(record.ids, record.id, record.mode)
    killed_final = SisaModel.open(model).version()
    reference_final = SisaModel.open(reference).version()
    equal = (
        killed_final.number == reference_final.number
        and all(
            set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
            for a, b in zip(killed_final.states, reference_final.states)
        )
        and np.array_equal(killed_final.status, reference_final.status)
    )
    leftovers = leftover_artefacts(model)
    result = {
        "kills": {"server": args.kills, "worker": args.worker_kills},
        "requests": len(requests),
        "accepted_202": len(accepted),
        "done_exactly_once": len(accepted) - len(lost) - len(not_done) - len(twice),
        "lost": lost,
        "not_done": not_done,
        "applied_other_than_once": twice,
        "weights_equal_uninterrupted": bool(equal),
        "final_version": killed_final.number,
        "leftover_artefacts": leftovers,
        "leftover_count": sum(len(v) for v in leftovers.values()),
        "chain": chain.to_dict(),
        "load": counters,
        "trials": trials,
        "ok": bool(
            not lost
            and not not_done
            and not twice
            and equal
            and chain.ok
            and len(accepted) == len(requests)
            and not sum(len(v) for v in leftovers.values())
            and counters["predictions_failed"] == 0
        ),
        "command": " ".join(["python", "benchmarks/service_kill.py", *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(),
        "note": "2 CPU cores shared with other jobs; timings are indicative only",
    }
    return result


def markdown(result: dict) -> str:
    lines = [
        "# Kill test of the deletion service",
        "",
        f"`{result['command']}` — {result['kills']['server']} SIGKILLs of the server and {result['kills']['worker']} of its "  # noqa: E501
        f"worker at random moments, under 2 prediction threads and 1 deletion thread on loopback.",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| deletion requests accepted (202) | {result['accepted_202']} of {result['requests']} |",
        f"| finished exactly once (one `done` event, one version) | {result['done_exactly_once']} |",
        f"| lost / not done / applied other than once | {len(result['lost'])} / {len(result['not_done'])} / {len(result['applied_other_than_once'])} |",  # noqa: E501
        f"| final weights equal the uninterrupted run's | {'yes' if result['weights_equal_uninterrupted'] else 'NO'} (version {result['final_version']}) |",  # noqa: E501
        f"| artefacts trained on deleted ids left | {result['leftover_count']} |",
        f"| ledger hash chain | {'intact' if result['chain']['ok'] else 'BROKEN: ' + result['chain']['problem']} ({result['chain']['events']} events) |",  # noqa: E501
        f"| predictions answered / failed while up / refused while down | {result['load']['predictions_ok']} / {result['load']['predictions_failed']} / {result['load']['predictions_refused_while_down']} |",  # noqa: E501
        f"| overall | {'PASS' if result['ok'] else 'FAIL'} |",
        "",
        "| trial | killed | requests accepted | done | in flight at the kill | server restart s |",
        "| ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for t in result["trials"]:
        flight = ", ".join(f"{i} ({s})" for i, s in t["in_flight"]) or "-"
        lines.append(
            f"| {t['trial']} | {t['target']} | {t['at_accepted']} | {t['at_done']} | {flight} | {t.get('restart_seconds', '')} |"  # noqa: E501
        )
    m = result["machine"]
    lines += [
        "",
        f"Machine: {m.get('processor', '?')}, {m.get('cpu_count', '?')} CPUs, shared with other jobs. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of the server")
    parser.add_argument("--worker-kills", type=int, default=10, help="SIGKILLs of the worker process alone")
    parser.add_argument("--requests", type=int, default=24, help="deletion requests (3 ids each)")
    parser.add_argument("--min-wait", type=float, default=2.0, help="seconds between kills: uniform in [min, max]")
    parser.add_argument("--max-wait", type=float, default=9.0)
    parser.add_argument("--in-work-delay", type=float, default=1.0,
                        help="after a request is seen running, kill within this many seconds (uniform)")
    parser.add_argument("--drain-seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/service-kill", help="scratch folder (replaced)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service" / "kill"))
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", result)
    write_text_atomic(out / "README.md", markdown(result))
    print(markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
