"""Curvature operators against dense float64 references on tiny models (curvlinops' testing habit).

Every reference is built independently of the code under test: the Hessian by ``torch.func.hessian`` of the
mean loss as a function of the flattened parameters, Jacobians by ``torch.func.jacrev``, per-sample
gradients by a Python loop of ``torch.autograd.grad``, solves by ``torch.linalg.solve``.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from torch.func import functional_call

from unlearnkit import curvature as C
from unlearnkit.data import Source
from unlearnkit.errors import UnlearnKitError
from unlearnkit.models import build_model
from unlearnkit.training import metered

N, CLASSES = 12, 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine a second OpenMP thread that
    waits for a busy core makes each small kernel ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class BatchNormNet(nn.Module):
    """Conv, BatchNorm (with non-trivial running statistics), ReLU, pool, linear classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.classifier = nn.Linear(2 * 3 * 3, CLASSES)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
            self.bn.running_var.copy_(torch.tensor([0.5, 2.0]))

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.classifier(x.flatten(1))


class TanhMLP(nn.Module):
    """A smooth network: its Hessian diagonal differs from the Gauss-Newton diagonal."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(16, 10)
        self.classifier = nn.Linear(10, CLASSES)

    def forward(self, x):
        return self.classifier(torch.tanh(self.hidden((x.flatten(1) - 0.5) / 0.29)))


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "tanh":  # 203 parameters
        model = TanhMLP()
    elif kind == "mlp":  # 16*10+10 + 10*3+3 = 203 parameters
        model = build_model(
            "mlp", in_channels=1, image_size=4, num_classes=CLASSES, width=10, depth=1, mean=[0.5], std=[0.29]
        )
    elif kind == "cnn":  # 176 parameters
        model = build_model("small-cnn", in_channels=1, image_size=8, num_classes=CLASSES, channels=(2, 3), hidden=6,
                            mean=[0.5], std=[0.29])
    else:  # 51 parameters
        model = BatchNormNet()
    return model.double()


def _data(kind: str, n: int = N):
    gen = torch.Generator().manual_seed(1)
    size = {"mlp": 4, "tanh": 4, "cnn": 8, "bn": 6}[kind]
    x = torch.rand(n, 1, size, size, generator=gen)  # float32 on purpose: the operators cast to the model's dtype
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return x, y


class Dense:
    """Dense references for the mean cross-entropy of ``model`` (in eval mode) on (x, y)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        model.eval()
        self.model, self.x, self.y = model, x.double(), y
        self.named = {n: p.detach() for n, p in model.named_parameters()}
        self.flat0 = torch.cat([p.reshape(-1) for p in self.named.values()])
        self.H = torch.func.hessian(self.loss)(self.flat0)

    def unflat(self, flat):
        out, offset = {}, 0
        for name, p in self.named.items():
            out[name] = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        return out

    def logits(self, flat, x=None):
        return functional_call(self.model, self.unflat(flat), (self.x if x is None else x,))

    def loss(self, flat):
        return F.cross_entropy(self.logits(flat), self.y)

    def per_sample_gradients(self):
        rows = []
        for i in range(self.x.shape[0]):
            flat = self.flat0.clone().requires_grad_()
            value = F.cross_entropy(self.logits(flat, self.x[i : i + 1]), self.y[i : i + 1])
            rows.append(torch.autograd.grad(value, flat)[0])
        return torch.stack(rows)

    def ggn(self):
        J = torch.func.jacrev(self.logits)(self.flat0)  # N x K x d
        p = torch.softmax(self.logits(self.flat0), 1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return torch.einsum("nkd,nkl,nle->de", J, lam, J) / self.x.shape[0]


def _random_vector(model, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float64) for n, p in model.named_parameters()}


def _random_mask(model, seed=3):
    """Half of the first and last parameters' entries; every other parameter unselected."""
    gen = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.named_parameters()]
    mask = {}
    for name, p in model.named_parameters():
        if name in (names[0], names[-1]):
            mask[name] = torch.rand(p.shape, generator=gen) < 0.5
    return mask


def _flat_mask(model, mask):
    return torch.cat(
        [mask.get(n, torch.zeros_like(p, dtype=torch.bool)).reshape(-1) for n, p in model.named_parameters()]
    )


def _close(a, b, rtol):
    return float((a - b).norm() / b.norm()) <= rtol


@pytest.fixture(scope="module", params=["mlp", "cnn", "bn"])
def setup(request):
    model = _model(request.param)
    x, y = _data(request.param)
    return model, x, y, Dense(model, x, y)


# -- exact operators ---------------------------------------------------------------------------------
def test_gradient_and_hvp_match_dense(setup):
    model, x, y, dense = setup
    g_ref = torch.func.grad(dense.loss)(dense.flat0)
    v = _random_vector(model)
    model.train()  # operators must switch to eval mode (BatchNorm running statistics) and restore this
    try:
        g = C.flatten(C.gradient(model, (x, y), batch_size=5))
        hv = C.flatten(C.hvp(model, (x, y), v, batch_size=5))
        assert model.training
    finally:
        model.eval()
    assert torch.allclose(g, g_ref, atol=1e-12, rtol=1e-9)
    assert torch.allclose(hv, dense.H @ C.flatten(v), atol=1e-11, rtol=1e-8)


def test_exact_diagonal_matches_dense(setup):
    model, x, y, dense = setup
    diag = C.flatten(C.exact_hessian_diagonal(model, (x, y), chunk=50))
    assert torch.allclose(diag, dense.H.diagonal(), atol=1e-12, rtol=1e-9)


def test_hessian_diagonal_is_the_gauss_newton_diagonal_for_piecewise_linear_networks(setup):
    model, x, y, dense = setup  # ReLU MLP, ReLU/max-pool CNN, conv + eval BatchNorm: piecewise linear
    ggn = C.flatten(C.fisher_diagonal(model, (x, y), kind="exact"))
    assert torch.allclose(ggn, dense.H.diagonal(), atol=1e-14, rtol=1e-10)
    assert (dense.H - dense.ggn()).abs().max() > 1e-2  # only the diagonal coincides
    smooth = _model("tanh")
    x, y = _data("tanh")
    exact = C.flatten(C.exact_hessian_diagonal(smooth, (x, y)))
    assert torch.allclose(exact, Dense(smooth, x, y).H.diagonal(), atol=1e-12, rtol=1e-9)
    assert (exact - C.flatten(C.fisher_diagonal(smooth, (x, y), kind="exact"))).abs().max() > 1e-3 * exact.abs().max()


def test_fisher_diagonals_match_dense(setup):
    model, x, y, dense = setup
    grads = dense.per_sample_gradients()
    empirical = C.flatten(C.fisher_diagonal(model, (x, y), kind="empirical"))
    assert torch.allclose(empirical, grads.square().mean(0), atol=1e-13, rtol=1e-9)
    exact = C.flatten(C.fisher_diagonal(model, (x, y), kind="exact", chunk_size=5))
    assert torch.allclose(exact, dense.ggn().diagonal(), atol=1e-13, rtol=1e-9)
    psg = C.per_sample_gradients(model, x[:5], y[:5])
    assert torch.allclose(torch.cat([psg[n].reshape(5, -1) for n in psg], 1), grads[:5], atol=1e-13)


def test_sampled_fisher_converges_to_exact():
    model = _model("mlp")
    x, y = _data("mlp")
    exact = C.flatten(C.fisher_diagonal(model, (x, y), kind="exact"))
    errors = []
    for draws in (10, 4000):
        sampled = C.flatten(C.fisher_diagonal(model, (x, y), kind="sampled", mc_samples=draws,
                                              generator=torch.Generator().manual_seed(5)))
        errors.append(float((sampled - exact).norm() / exact.norm()))
    assert errors[1] < 0.05 and errors[1] < errors[0] / 5  # Monte-Carlo error ~ 1/sqrt(draws)
    # one draw per sample on many copies of the data estimates the same matrix
    copies = (x.repeat(300, 1, 1, 1), y.repeat(300))
    one_each = C.flatten(C.fisher_diagonal(model, copies, kind="sampled", generator=torch.Generator().manual_seed(6)))
    assert float((one_each - exact).norm() / exact.norm()) < 0.1


# -- estimators --------------------------------------------------------------------------------------
def test_hutchinson_correlates_with_exact_diagonal():
    model = _model("tanh")  # smooth, so diag(H) is not the Gauss-Newton diagonal and Hutchinson is needed
    x, y = _data("tanh")
    exact = C.flatten(C.exact_hessian_diagonal(model, (x, y))).numpy()
    # Diagonal entries here are 0.004-0.3 times the norm of their row's off-diagonal part (median 0.11), so
    # ranking all 203 entries takes thousands of probes (Spearman 0.82 with 100, 0.99 with 3000).
    estimate = C.flatten(C.hutchinson_diagonal(model, (x, y), probes=3000, batch_probes=1000,
                                               generator=torch.Generator().manual_seed(0))).numpy()
    assert pearsonr(exact, estimate)[0] >= 0.95
    assert spearmanr(exact, estimate)[0] >= 0.95
    # unbiased, not just correlated: the error shrinks with the number of probes
    few = C.flatten(
        C.hutchinson_diagonal(model, (x, y), probes=100, generator=torch.Generator().manual_seed(0))
    ).numpy()
    err = lambda e: ((e - exact) ** 2).sum() ** 0.5 / (exact ** 2).sum() ** 0.5  # noqa: E731
    assert err(estimate) < 0.15 and err(estimate) < err(few) / 4


def test_hutchinson_subsample_is_seeded_and_exact_on_its_subset():
    model = _model("mlp")
    x, y = _data("mlp")
    a = C.hutchinson_diagonal(model, (x, y), probes=8, max_samples=5, generator=torch.Generator().manual_seed(3))
    b = C.hutchinson_diagonal(model, (x, y), probes=8, max_samples=5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) for n in a)
    # the subset is the first 5 of a seeded permutation, then probes follow from the same generator
    gen = torch.Generator().manual_seed(3)
    subset = torch.randperm(N, generator=gen)[:5]
    c = C.hutchinson_diagonal(model, (x[subset], y[subset]), probes=8, generator=gen)
    assert all(torch.allclose(a[n], c[n], atol=1e-14) for n in a)


def test_top_eigenvalue():
    model = _model("cnn")
    x, y = _data("cnn")
    dense = Dense(model, x, y)
    eig = torch.linalg.eigvalsh(dense.H)
    top = eig[eig.abs().argmax()]
    assert abs(C.top_eigenvalue(model, (x, y), iterations=300, tol=1e-7) - float(top)) <= 1e-3 * abs(float(top))


# -- inverses ----------------------------------------------------------------------------------------
def _damping(H, condition):
    """The damping that makes H + damping·I positive definite with the given condition number."""
    eig = torch.linalg.eigvalsh(H)
    lo, hi = float(eig[0]), float(eig[-1])
    return (hi - condition * lo) / (condition - 1), hi


def test_conjugate_gradient_matches_dense_solve(setup):
    model, x, y, dense = setup
    damping, _ = _damping(dense.H, condition=30)
    v = _random_vector(model)
    reference = torch.linalg.solve(dense.H + damping * torch.eye(len(dense.flat0), dtype=torch.float64), C.flatten(v))
    with metered() as cost:
        solution, info = C.conjugate_gradient(model, (x, y), v, damping=damping, max_iter=200, tol=1e-10)
    assert info.converged and info.residual <= 1e-10
    assert _close(C.flatten(solution), reference, 1e-6)
    assert (cost.forward, cost.backward) == (info.iterations * N, 2 * info.iterations * N)
    # too few iterations: not converged, and says so
    _, short = C.conjugate_gradient(model, (x, y), v, damping=damping, max_iter=2, tol=1e-10)
    assert not short.converged and short.iterations == 2 and short.reason == "max_iter reached"


def test_lissa_matches_dense_solve():
    model = _model("cnn")
    x, y = _data("cnn")
    dense = Dense(model, x, y)
    damping, top = _damping(dense.H, condition=4)
    scale = 1.05 * (top + damping)  # contraction 1 - 1/(4 * 1.05) = 0.76 per step
    v = _random_vector(model)
    reference = torch.linalg.solve(dense.H + damping * torch.eye(len(dense.flat0), dtype=torch.float64), C.flatten(v))
    # full batch: deterministic; the error shrinks by 0.76 per step, 80 steps give < 1e-9
    full = C.flatten(C.lissa(model, (x, y), v, damping=damping, scale=scale, depth=80, batch_size=N))
    assert _close(full, reference, 1e-8)
    # mini-batches of 6 of the 12 samples: unbiased but noisy; the stated tolerance is 5 % with 4 repeats
    with metered() as cost:
        mini = C.flatten(C.lissa(model, (x, y), v, damping=damping, scale=scale, depth=60, batch_size=6, repeats=4,
                                 generator=torch.Generator().manual_seed(0)))
    assert _close(mini, reference, 0.05)
    assert (cost.forward, cost.backward) == (4 * 60 * 6, 2 * 4 * 60 * 6)
    with pytest.raises(UnlearnKitError, match="diverged"):  # scale below half the top eigenvalue: |1 - mu/s| > 1
        C.lissa(model, (x, y), v, damping=damping, scale=0.2 * scale, depth=400, batch_size=N)


def test_woodfisher_matches_dense_inverse(setup):
    model, x, y, dense = setup
    G = dense.per_sample_gradients()
    v = _random_vector(model)
    for damping in (1e-3, 0.5):
        matrix = damping * torch.eye(G.shape[1], dtype=torch.float64) + G.T @ G / N
        reference = torch.linalg.solve(matrix, C.flatten(v))
        solution = C.flatten(C.woodfisher_inverse(model, (x, y), v, damping=damping, chunk_size=5))
        assert _close(solution, reference, 1e-8)


def test_diagonal_inverse():
    diag = {"a": torch.tensor([1.0, 3.0, -0.5]), "b": torch.tensor([[0.0, 2.0]])}
    v = {"a": torch.tensor([2.0, 8.0, 1.0]), "b": torch.tensor([[1.0, 1.0]])}
    mask = {"a": torch.tensor([True, True, False])}
    out = C.diagonal_inverse(diag, v, damping=1.0, mask=mask)
    assert out["a"].tolist() == [1.0, 2.0, 0.0] and out["b"].tolist() == [[0.0, 0.0]]
    with pytest.raises(UnlearnKitError, match="not positive"):
        C.diagonal_inverse(diag, v, damping=0.5)


# -- masks -------------------------------------------------------------------------------------------
def test_masked_operators_act_on_the_subspace(setup):
    model, x, y, dense = setup
    mask = _random_mask(model)
    keep = _flat_mask(model, mask)
    sub = keep.nonzero().squeeze(1)
    H = dense.H[sub][:, sub]
    v = _random_vector(model)
    flat_v = C.flatten(v)

    def check(vector, expected, atol=1e-11, rtol=1e-8):
        flat = C.flatten(vector)
        assert set(vector) == set(dense.named)
        assert (flat[~keep] == 0).all()
        assert torch.allclose(flat[keep], expected, atol=atol, rtol=rtol)

    check(C.gradient(model, (x, y), mask=mask), torch.func.grad(dense.loss)(dense.flat0)[keep])
    check(C.hvp(model, (x, y), v, mask=mask), H @ flat_v[keep])
    check(C.exact_hessian_diagonal(model, (x, y), mask=mask), H.diagonal())
    check(C.fisher_diagonal(model, (x, y), kind="exact", mask=mask), dense.ggn().diagonal()[keep], atol=1e-13)
    G = dense.per_sample_gradients()[:, keep]
    check(C.fisher_diagonal(model, (x, y), kind="empirical", mask=mask), G.square().mean(0), atol=1e-13)
    sampled = C.flatten(C.fisher_diagonal(model, (x, y), kind="sampled", generator=torch.Generator().manual_seed(4)))
    check(C.fisher_diagonal(model, (x, y), kind="sampled", mask=mask, generator=torch.Generator().manual_seed(4)),
          sampled[keep], atol=1e-15)  # same label draws, same entries
    psg = C.per_sample_gradients(model, x, y, mask=mask)
    assert (torch.cat([psg[n].reshape(N, -1) for n in psg], 1)[:, ~keep] == 0).all()

    damping, top = _damping(H, condition=4)
    reference = torch.linalg.solve(H + damping * torch.eye(len(sub), dtype=torch.float64), flat_v[keep])
    solution, info = C.conjugate_gradient(model, (x, y), v, damping=damping, tol=1e-10, max_iter=300, mask=mask)
    assert info.converged and info.iterations <= len(sub) + 5
    check(solution, reference, atol=1e-9, rtol=1e-6)
    check(C.lissa(model, (x, y), v, damping=damping, scale=1.05 * (top + damping), depth=80, batch_size=N, mask=mask),
          reference, atol=1e-9, rtol=1e-7)
    wf_reference = torch.linalg.solve(0.1 * torch.eye(len(sub), dtype=torch.float64) + G.T @ G / N, flat_v[keep])
    check(C.woodfisher_inverse(model, (x, y), v, damping=0.1, mask=mask), wf_reference, atol=1e-9, rtol=1e-8)
    eig = torch.linalg.eigvalsh(H)
    top = float(eig[eig.abs().argmax()])
    assert abs(C.top_eigenvalue(model, (x, y), mask=mask, iterations=300, tol=1e-7) - top) <= 1e-3 * abs(top)

    estimate = C.flatten(C.hutchinson_diagonal(model, (x, y), probes=2000, batch_probes=500, mask=mask))
    assert (estimate[~keep] == 0).all()
    assert pearsonr(estimate[keep].numpy(), H.diagonal().numpy())[0] >= 0.95


def test_mask_validation():
    model = _model("mlp")
    x, y = _data("mlp")
    with pytest.raises(UnlearnKitError, match="not trainable"):
        C.gradient(model, (x, y), mask={"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(UnlearnKitError, match="selects no"):
        C.gradient(model, (x, y), mask={n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()})
    with pytest.raises(UnlearnKitError, match="shape"):
        C.hvp(model, (x, y), {"classifier.bias": torch.ones(7)})
    with pytest.raises(UnlearnKitError, match="no samples"):
        C.gradient(model, (x[:0], y[:0]))


# -- cost accounting and data forms ------------------------------------------------------------------
def test_sample_pass_counts():
    model = _model("mlp")
    x, y = _data("mlp")
    v = _random_vector(model)
    mask = _random_mask(model)
    selected = int(_flat_mask(model, mask).sum())
    expected = {
        "gradient": (lambda: C.gradient(model, (x, y)), (N, N)),
        "per_sample": (lambda: C.per_sample_gradients(model, x[:5], y[:5]), (5, 5)),
        "empirical": (lambda: C.fisher_diagonal(model, (x, y)), (N, N)),
        "sampled": (lambda: C.fisher_diagonal(model, (x, y), kind="sampled", mc_samples=3), (N, 3 * N)),
        "exact": (lambda: C.fisher_diagonal(model, (x, y), kind="exact", max_samples=7), (7, 7 * CLASSES)),
        "hvp": (lambda: C.hvp(model, (x, y), v), (N, 2 * N)),
        "hutchinson": (
            lambda: C.hutchinson_diagonal(model, (x, y), probes=10, batch_probes=4, max_samples=8),
            (80, 160),
        ),
        "exact_diag": (lambda: C.exact_hessian_diagonal(model, (x, y), mask=mask), (selected * N, 2 * selected * N)),
        "lissa": (
            lambda: C.lissa(model, (x, y), v, damping=1.0, scale=10.0, depth=7, repeats=2, batch_size=5),
            (70, 140),
        ),
        "woodfisher": (lambda: C.woodfisher_inverse(model, (x, y), v, damping=0.1, n_samples=9), (9, 9)),
        "diagonal_inverse": (lambda: C.diagonal_inverse(v, v, damping=100.0), (0, 0)),
    }
    for name, (call, passes) in expected.items():
        with metered() as cost:
            call()
        assert (cost.forward, cost.backward) == passes, name


def test_source_data_and_batch_size_do_not_change_results():
    model = _model("cnn")
    x, y = _data("cnn", n=20)
    v = _random_vector(model)
    # a shuffled, augmenting source over a subset is read in index order, without augmentation
    from unlearnkit.data import Augment
    indices = torch.tensor([3, 1, 4, 15, 9, 2, 6, 5, 19, 7])
    source = Source(x, y, indices, batch_size=3, shuffle=True, augment=Augment(crop_padding=2, horizontal_flip=True))
    direct = C.hvp(model, (x[indices], y[indices]), v, batch_size=10)
    assert all(torch.allclose(C.hvp(model, source, v, batch_size=4)[n], direct[n], atol=1e-14) for n in v)
    a = C.fisher_diagonal(model, source, kind="exact")
    b = C.fisher_diagonal(model, (x[indices], y[indices]), kind="exact", chunk_size=1)
    assert all(torch.allclose(a[n], b[n], atol=1e-15) for n in a)


def test_custom_loss_and_float32_model():
    model = _model("mlp")
    x, y = _data("mlp")
    dense = Dense(model, x, y)

    def smoothed(logits, labels):  # label smoothing, as a per-sample loss
        return F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.1)

    ref = torch.func.hessian(lambda f: smoothed(dense.logits(f), dense.y).mean())(dense.flat0)
    v = _random_vector(model)
    assert torch.allclose(C.flatten(C.hvp(model, (x, y), v, loss=smoothed)), ref @ C.flatten(v), atol=1e-11)
    with pytest.raises(UnlearnKitError, match="empirical"):
        C.fisher_diagonal(model, (x, y), kind="exact", loss=smoothed)
    # a float32 model computes in float32 and returns float32
    model32 = _model("mlp").float()
    g = C.gradient(model32, (x, y))
    assert all(t.dtype == torch.float32 for t in g.values())
    assert math.isclose(
        float(C.flatten(g).norm()), float(torch.func.grad(dense.loss)(dense.flat0).norm()), rel_tol=1e-4
    )


def test_vector_helpers():
    model = _model("mlp")
    v = _random_vector(model)
    flat = C.flatten(v)
    back = C.unflatten(flat, model)
    assert all(torch.equal(back[n], v[n]) for n in v)
    assert torch.isclose(C.dot(v, v), flat @ flat)
    masked = C.apply_mask(v, {"classifier.bias": torch.tensor([True, False, True])})
    assert masked["classifier.bias"][1] == 0 and (masked["classifier.weight"] == 0).all()
    with pytest.raises(UnlearnKitError):
        C.unflatten(flat[:-1], model)
