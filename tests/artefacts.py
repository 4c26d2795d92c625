"""Checks shared by the purge and crash tests (a plain module: not collected, imported by the tests)."""

import json

import numpy as np
from safetensors.torch import load_file

from unlearnkit.sisa import ACTIVE, DELETED_EXACT


def holders_of(sisa, deleted_ids) -> list[str]:
    """Files under the model directory trained on one of ``deleted_ids``, judged from content (stage manifests'
    recorded exclusions through the provenance, with the key re-derived; version status), never names."""
    prov, root = sisa.provenance, sisa.meta["root"]
    deleted = np.zeros(prov.n, dtype=bool)
    deleted[np.asarray(deleted_ids)] = True
    current = sisa.current_version()
    found = []
    for path in sorted(sisa.path.rglob("*")):
        rel = path.relative_to(sisa.path)
        if any(part.startswith(".tmp-") for part in rel.parts):
            found.append(f"{rel} (temporary)")
            continue
        if path.name == "model.safetensors":  # a stage checkpoint
            stage = json.loads((path.parent / "manifest.json").read_text())["sisa_stage"]
            mask = np.zeros(prov.n, dtype=bool)
            mask[stage["excluded"]] = True
            assert prov.stage_keys(stage["shard"], mask, root)[stage["stage"]] == stage["key"], rel
            members = prov.members[stage["shard"]]
            trained = members[(prov.member_slices[stage["shard"]] < stage["stage"]) & ~mask[members]]
            if deleted[trained].any():
                found.append(f"{rel} (stage)")
        elif path.name == "weights.safetensors":  # a version
            status = load_file(str(path.parent / "status.safetensors"))["status"].numpy()
            held = deleted & (status != DELETED_EXACT)
            if held.any() and not (path.parent.name == f"v{current:06d}" and (status[held] != ACTIVE).all()):
                found.append(f"{rel} (version)")
        elif path.suffix == ".safetensors" and path.name not in ("status.safetensors", "provenance.safetensors"):
            found.append(f"{rel} (unknown weights)")
    return found
