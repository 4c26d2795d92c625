"""SISA: provenance, ensemble, and exact deletion that is bitwise equal to from-scratch training (CPU)."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unlearnkit._util import seed_everything
from unlearnkit.data import Source
from unlearnkit.models import build_model
from unlearnkit.sisa import DELETED_EXACT, SisaModel, stage_seed, train_sisa
from unlearnkit.training import Phase, TrainConfig, fit

CONFIG = TrainConfig(epochs=3, batch_size=64, lr=0.05)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("sisa") / "model"
    return train_sisa(digits, "mlp", out=path, shards=2, slices=3, config=CONFIG, seed=3, threads=1)


def copy_model(sisa: SisaModel, tmp_path) -> SisaModel:
    target = tmp_path / "copy"
    shutil.copytree(sisa.path, target)
    return SisaModel.open(target, data=sisa.data)


def from_scratch(sisa: SisaModel, shard: int, removed: np.ndarray) -> dict:
    """Train one shard from its initialisation without the removed ids, written out independently of
    unlearnkit.sisa.shards: one model kept in memory, global ids, the documented seeds."""
    data, prov, grid = sisa.data, sisa.provenance, sisa.meta["sisa"]
    seed_everything(stage_seed(grid["seed"], shard, 0))
    model = build_model(sisa.meta["model"]["name"], **sisa.meta["model"]["args"])
    torch.set_num_threads(grid["threads"])
    for stage in range(1, prov.slices + 1):
        keep = (prov.shard_of == shard) & (prov.slice_of < stage) & ~removed
        ids = torch.from_numpy(np.flatnonzero(keep))
        seed = stage_seed(grid["seed"], shard, stage)
        torch.manual_seed(seed)
        fit(
            model,
            Phase(Source(data.x_train, data.y_train, ids, batch_size=CONFIG.batch_size)),
            CONFIG,
            seed=seed,
            device="cpu",
        )
    return {k: v.detach() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name].to(a[name].dtype)), name


def test_provenance_is_a_balanced_partition(trained, digits):
    prov = trained.provenance
    assert prov.n == digits.n_train
    counts = prov.counts(np.zeros(prov.n, dtype=np.uint8))
    assert counts.sum() == digits.n_train
    assert counts.max() - counts.min() <= 1
    members = np.concatenate(prov.members)
    assert np.array_equal(np.sort(members), np.arange(digits.n_train))


def test_version_zero_is_the_trained_ensemble(trained, digits):
    version = trained.version()
    assert version.number == 0 and version.info["request_id"] is None
    assert (version.status == 0).all()
    ensemble = trained.ensemble(version)
    probs = torch.stack([F.softmax(m(digits.x_test), 1) for m in ensemble.members]).mean(0)
    assert torch.allclose(F.softmax(ensemble(digits.x_test), 1), probs, atol=1e-6)
    assert trained.test_accuracy(version) > 85.0
    # The initial training is itself "from scratch with nothing removed".
    assert_same_weights(version.states[1], from_scratch(trained, 1, np.zeros(digits.n_train, dtype=bool)))


def test_exact_deletion_is_bitwise_equal_to_training_the_shard_from_scratch(trained, tmp_path):
    sisa = copy_model(trained, tmp_path)
    prov = sisa.provenance
    # Three ids of shard 0's middle slice, one of shard 1's last slice.
    ids = np.concatenate(
        [prov.members[0][prov.member_slices[0] == 1][:3], prov.members[1][prov.member_slices[1] == 2][:1]]
    )
    before = sisa.version()
    result = sisa.exact_delete(before, ids)
    by_shard = {r.shard: r for r in result.shards}
    assert by_shard[0].resumed_from == 1 and by_shard[0].trained == [2, 3]
    assert by_shard[1].resumed_from == 2 and by_shard[1].trained == [3]
    removed = np.zeros(prov.n, dtype=bool)
    removed[ids] = True
    for shard in (0, 1):
        assert_same_weights(result.states[shard], from_scratch(sisa, shard, removed))
        assert not torch.equal(result.states[shard]["classifier.weight"], before.states[shard]["classifier.weight"])
    assert (result.status[ids] == DELETED_EXACT).all() and (result.status != 0).sum() == len(ids)


def test_unaffected_shard_is_untouched_and_a_repeat_reuses_every_stage(trained, tmp_path):
    sisa = copy_model(trained, tmp_path)
    prov = sisa.provenance
    ids = prov.members[0][prov.member_slices[0] == 2][:2]
    result = sisa.exact_delete(sisa.version(), ids)
    assert [r.shard for r in result.shards] == [0]
    assert_same_weights(result.states[1], sisa.version().states[1])
    again = sisa.exact_delete(sisa.version(), ids)  # same history: its final stage already exists
    assert again.shards[0].trained == [] and again.shards[0].resumed_from == prov.slices
    assert_same_weights(again.states[0], result.states[0])


def test_missing_or_corrupted_stage_checkpoint_falls_back_to_an_earlier_stage(trained, tmp_path):
    sisa = copy_model(trained, tmp_path)
    prov = sisa.provenance
    ids = prov.members[0][prov.member_slices[0] == 2][:1]  # would resume from stage 2
    keys = prov.stage_keys(0, np.zeros(prov.n, dtype=bool), sisa.meta["root"])
    weights = sisa.store.stage_dir(0, 2, keys[2]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    shutil.rmtree(sisa.store.stage_dir(0, 1, keys[1]))
    result = sisa.exact_delete(sisa.version(), ids)
    shard = result.shards[0]
    assert shard.resumed_from == 0 and shard.trained == [1, 2, 3]
    assert any("corrupted" in w for w in shard.warnings)
    removed = np.zeros(prov.n, dtype=bool)
    removed[ids] = True
    assert_same_weights(result.states[0], from_scratch(sisa, 0, removed))


def test_exact_deletion_is_bitwise_for_a_cnn_too(tmp_path, digits):
    # Convolutional models train channels-last; the resumed and the from-scratch paths must agree anyway.
    sisa = train_sisa(digits, "small-cnn", out=tmp_path / "cnn", shards=2, slices=3, config=CONFIG, seed=1, threads=1,
                      model_options={"channels": [8, 16], "hidden": 32})
    prov = sisa.provenance
    ids = prov.members[1][prov.member_slices[1] == 1][:5]
    result = sisa.exact_delete(sisa.version(), ids)
    removed = np.zeros(prov.n, dtype=bool)
    removed[ids] = True
    assert result.shards[0].resumed_from == 1
    assert_same_weights(result.states[1], from_scratch(sisa, 1, removed))
