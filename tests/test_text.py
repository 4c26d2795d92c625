"""Text data, character language models, secret: requests, exposure, and unlearning secrets (docs/text.md).

The corpus is a small seeded word salad written here (about 12,000 characters, 32-character sequences); the
language model a char-lstm with 64 hidden units. Bounds stated in the tests were seen in a scratch run of
exactly these settings (figures in the comments)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from unlearnkit import api
from unlearnkit.checkpoint import load_checkpoint
from unlearnkit.data import load_dataset
from unlearnkit.data.text import text_dataset
from unlearnkit.errors import UnlearnKitError
from unlearnkit.evaluation import evaluate
from unlearnkit.exposure import exposure, log_perplexity, secret_positions
from unlearnkit.methods import unlearn
from unlearnkit.models import build_model
from unlearnkit.requests import build_request
from unlearnkit.secrets import FORMATS, SecretFormat, Secrets, luhn_check_digit
from unlearnkit.training import TrainConfig

WORDS = (
    "the a one old king river stone light night day house road tree green small long black white dog cat "
    "sings walks falls sees holds keeps finds gives takes makes under over near with from into"
).split()
RECIPE = TrainConfig(
    epochs=30, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0, grad_clip=1.0, augment=False
)
LM = {"hidden": 64, "embedding": 16}


def corpus(n_chars: int = 12_000, seed: int = 0) -> str:
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + ".\n")
        size += len(out[-1])
    return "".join(out)


@pytest.fixture(scope="module")
def tiny():
    return text_dataset("tiny", corpus(), "tests", seq_len=32)


# -- data ---------------------------------------------------------------------------------------------
def test_sequences_have_stable_ids_and_a_fingerprint(tiny, tmp_path):
    text = corpus()
    # Window k covers characters 32k .. 32k+32; every tenth window is a validation sequence.
    assert tiny.decode(tiny.x_train[0]) == text[:32] and tiny.decode(tiny.y_train[0]) == text[1:33]
    assert tiny.decode(tiny.x_test[0]) == text[9 * 32 : 10 * 32]
    assert tiny.decode(tiny.x_train[9]) == text[10 * 32 : 11 * 32]
    assert tiny.n_train + tiny.x_test.shape[0] == (len(text) - 1) // 32
    assert text_dataset("tiny", corpus(), "tests", seq_len=32).fingerprint == tiny.fingerprint
    assert text_dataset("tiny", corpus(seed=1), "tests", seq_len=32).fingerprint != tiny.fingerprint
    sub = tiny.subset(100, 10, seed=0)
    assert sub.n_train == 100 and sub.name == "tiny[100,10]" and sub.vocab == tiny.vocab
    # Fortune-format files through the registry (`text` reads any UTF-8 file).
    path = tmp_path / "cookies.txt"
    path.write_text("\n%\n".join(corpus(3000, seed=s) for s in range(2)))
    data = load_dataset("text", path)
    assert data.seq_len == 64 and data.describe()["modality"] == "text" and data.num_classes == len(data.vocab)


@pytest.mark.parametrize(
    "content, message", [(b"", "is empty"), (b"  \n", "is empty"), (b"caf\xe9 au lait" * 500, "not UTF-8")]
)
def test_bad_text_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UnlearnKitError, match=message):
        load_dataset("text", path)


# -- secrets ------------------------------------------------------------------------------------------
def test_luhn_and_formats():
    assert int(luhn_check_digit(torch.tensor([[int(c) for c in "7992739871"]]))[0]) == 3
    assert FORMATS["credit-card"].is_valid("4532015112830366") and not FORMATS["credit-card"].is_valid(
        "4532015112830367"
    )
    fmt = FORMATS["credit-card"]
    drawn = fmt.sample(50, torch.Generator().manual_seed(0))
    assert torch.equal(fmt.to_indices(fmt.from_indices(drawn)), drawn)
    assert all(fmt.is_valid(s) for s in fmt.text(fmt.from_indices(drawn)))
    assert fmt.space == 10**15 and FORMATS["password"].space == 36**8


def test_secret_request_plants_and_corrects(tiny):
    request = build_request("secret:3:password", tiny, seed=1)
    assert request.effect == "edit" and request.forget.numel() == 3
    s = request.secrets
    assert len(set(s.secrets)) == 3 and all(a != b for a, b in zip(s.secrets, s.substitutes))
    for j, i in enumerate(request.forget.tolist()):
        as_trained = tiny.decode(request.trained_x[j]) + tiny.decode(request.trained_y[j][-1:])
        corrected = tiny.decode(request.corrected_x[j]) + tiny.decode(request.corrected_y[j][-1:])
        original = tiny.decode(tiny.x_train[i]) + tiny.decode(tiny.y_train[i][-1:])
        assert as_trained == "my password is " + s.secrets[j] + original[23:]
        assert corrected == "my password is " + s.substitutes[j] + original[23:]
    # Rebuilt from (spec, seed), as a checkpoint does; another seed plants other secrets in other sequences.
    again = build_request("secret:3:password", tiny, seed=1)
    assert again.forget_hash == request.forget_hash and again.secrets == request.secrets
    assert build_request("secret:3:password", tiny, seed=2).secrets.secrets != s.secrets
    # ids: removes whole sequences of a text data set too.
    assert build_request("random:0.1", tiny).forget.numel() == round(0.1 * tiny.n_train)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("secret:3:visa", "unknown secret format 'visa'"),
        ("secret:100000:pin", "plants 100000 secrets in"),
        ("secret:1:pin:" + "x" * 40, "not fewer than the sequence length 32"),
        ("secret:1:credit-card:" + "x" * 20, "holds at most 13 after the prefix"),
        ("secret:0:pin", "N must be at least 1"),
        ("class:0", "needs an image classification data set"),
    ],
)
def test_bad_secret_requests_are_one_line_errors(tiny, spec, message):
    with pytest.raises(UnlearnKitError, match=message) as info:
        build_request(spec, tiny)
    assert "\n" not in str(info.value)


def test_secret_on_images_is_refused():
    with pytest.raises(UnlearnKitError, match="needs a text data set"):
        build_request("secret:1", load_dataset("digits"))


# -- exposure -----------------------------------------------------------------------------------------
def test_exposure_equals_the_exact_rank_on_a_tiny_alphabet(tiny):
    """|C| = 3^4 = 81: the enumerated exposure is log2|C| − log2 rank with the rank counted by brute force, and the
    sampled estimate from 20,000 draws agrees with it within the binomial error of the sample."""
    torch.manual_seed(0)
    model = build_model("char-lstm", **tiny.model_args(), hidden=16, embedding=8).eval()
    fmt = SecretFormat("tiny", "abc", 4, "key ")
    every = fmt.from_indices(torch.arange(fmt.space))
    secrets = Secrets(fmt, "key ", ("abca", "ccba", "bbbb"), ("aaaa", "aaaa", "aaaa"))
    exact = exposure(model, tiny, secrets)
    assert exact.exact and exact.compared == 80
    # Brute force: the log-perplexity of each candidate by a separate, one-at-a-time computation.
    with torch.no_grad():

        def logppl(text):
            ids = tiny.encode("key " + text)
            logp = torch.log_softmax(model(ids[None, :-1])[0], -1)
            return -sum(float(logp[3 + t, ids[4 + t]]) for t in range(4)) / math.log(2)

        brute = {s: logppl(s) for s in fmt.text(every)}
    for j, secret in enumerate(secrets.secrets):
        rank = 1 + sum(v < brute[secret] for c, v in brute.items() if c != secret)
        assert exact.rank(j) == rank
        assert exact.exposure[j] == pytest.approx(math.log2(81) - math.log2(rank), abs=1e-9)
    assert torch.allclose(
        log_perplexity(model, tiny, "key ", fmt, every),
        torch.tensor([brute[s] for s in fmt.text(every)], dtype=torch.float64),
        atol=1e-4,
    )
    draws = fmt.sample(20_000, torch.Generator().manual_seed(3))
    sampled = exposure(model, tiny, secrets, candidates=draws)
    assert not sampled.exact
    for j, secret in enumerate(secrets.secrets):
        q = (exact.rank(j) - 1) / 80  # the true fraction of other candidates ranked above the secret
        m = int((draws != fmt.to_indices(secret_positions(fmt, [secret]))).sum())  # draws of the secret are left out
        k_expected, k_sd = q * m, math.sqrt(m * q * (1 - q)) + 1
        assert abs(sampled.lower[j] - k_expected) < 4 * k_sd
        assert sampled.rank(j) == pytest.approx(exact.rank(j), rel=0.1, abs=1.0)


# -- learning and unlearning a secret ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tiny):
    """A char-lstm trained on the tiny corpus with one PIN planted (10^4 candidates: exact exposure), the model
    retrained on the corrected corpus, and their evaluations."""
    request = build_request("secret:1:pin", tiny, seed=0)
    trained = api.train(tiny, "char-lstm", request=request, config=RECIPE, model_options=LM, device="cpu")
    retrained = unlearn(
        trained.model,
        request,
        tiny,
        "retrain",
        recipe=RECIPE,
        model_name="char-lstm",
        model_args=trained.model_args,
        device="cpu",
    )
    reference = evaluate(retrained.model, request, tiny)
    return request, trained, retrained, evaluate(trained.model, request, tiny, reference=reference), reference


def test_planted_secret_is_exposed_and_retraining_removes_it(planted):
    request, trained, retrained, before, reference = planted
    # Scratch run: exposure 13.29 of 13.29 bits (rank 1 of 10^4) before, 1.49 after retraining; val ppl 2.30 both.
    assert before["exposure"] >= 10.0 and before["exposure_fit"] == before["exposure"]
    assert reference["exposure"] <= 4.0 and reference["extracted"] == 0.0
    assert reference["val_ppl"] < 1.1 * before["val_ppl"]
    assert before["forget_ppl"] < reference["forget_ppl"]


# The methods of the issue with options for a language model (the image defaults barely move one sequence), and
# what each did in the scratch run (exposure 13.29 bits before = rank 1 of 10^4, val ppl 2.30; retrained 1.49 bits):
METHODS = {
    # masked SGD with every entry selected = fine-tuning on the corrected sequence mixed with 4x retain:
    # 6.49 bits, ppl 2.97
    "finetune on corrected": ("saps", {"fraction": 1.0, "epochs": 20, "lr": 1.0, "retain_per_forget": 4.0}),
    # SAPS, 10 % of the entries by G²/(|diag H| + λ): 4.73 bits, ppl 2.58 (by the largest |diag H|: 13.29, no change)
    "saps": (
        "saps",
        {"criterion": "newton_gain", "epochs": 20, "lr": 1.0, "retain_per_forget": 4.0, "curvature_samples": 128},
    ),
    "warnecke_first": ("warnecke_first", {"tau": 500.0}),  # 12.29 bits, ppl 3.26 (tau 1000: 10.12, ppl 9.39)
    # 12.29 bits, ppl 2.49 (scale 10: 1.72 bits, ppl 5.96)
    "warnecke_second": ("warnecke_second", {"curvature_samples": 64, "max_iter": 10, "scale": 3.0}),
    # ascent on the PIN's 4 characters, stopped when none is predicted: 8.04 bits, ppl 2.37
    "grad_ascent": ("grad_ascent", {"lr": 0.02, "epochs": 10, "target_forget_acc": 10.0}),
}


@pytest.mark.parametrize("label", list(METHODS))
def test_each_method_lowers_exposure_without_destroying_perplexity(planted, tiny, label):
    request, trained, retrained, before, reference = planted
    method, options = METHODS[label]
    result = unlearn(
        trained.model,
        request,
        tiny,
        method,
        recipe=RECIPE,
        model_name="char-lstm",
        model_args=trained.model_args,
        device="cpu",
        **options,
    )
    after = evaluate(
        result.model, request, tiny, reference=reference, cost=result.cost, retrain_seconds=retrained.cost.seconds
    )
    # At least one rank step (1 bit) in every scratch run; perplexity within 1.42x of the original's.
    assert after["exposure"] < before["exposure"] - 0.5, after.metrics
    assert after["val_ppl"] < 1.5 * before["val_ppl"], after.metrics
    assert after["backward_samples"] > 0


def test_checkpoint_records_the_secret_request(tmp_path, tiny):
    path = tmp_path / "cookies.txt"
    path.write_text(corpus(6000))
    data = load_dataset("text", path)
    trained = api.train(
        data,
        "char-transformer",
        request="secret:2",
        config=RECIPE.replace(epochs=1),
        model_options={"width": 16, "depth": 1, "heads": 2},
        device="cpu",
        data_dir=path,
        out=tmp_path / "ckpt",
    )
    checkpoint = load_checkpoint(trained.path)
    assert checkpoint.manifest["request"]["spec"] == "secret:2"
    request = checkpoint.request(checkpoint.dataset())
    assert request.secrets == trained.request.secrets and "val_ppl" in checkpoint.manifest["metrics"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearnkit.cli",
            "--threads",
            "1",
            "evaluate",
            "--checkpoint",
            str(trained.path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics["request"] == "secret:2" and metrics["exposure_samples"] == 4095 and metrics["val_ppl"] > 1.0
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearnkit.cli",
            "train",
            "--dataset",
            "text",
            "--data-dir",
            str(path),
            "--request",
            "secret:2:visa",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown secret format 'visa'" in bad.stderr


def test_sequence_fisher_is_the_ggn_of_the_mean_per_character_loss(tiny):
    """SAPS's diag(H) estimate for a language model: the exact Fisher of sequences equals the GGN diagonal
    (1/N) Σ_i (1/T) Σ_t J_tᵀ (diag p_t − p_t p_tᵀ) J_t computed from full Jacobians, and the sampled Fisher
    (one label per position) averages to it. (On the transformer: this float64 check cannot use the char-lstm,
    whose float64 kernel torch.func does not vmap; in float32 both kinds run on it.)"""
    from torch.func import functional_call, jacrev

    from unlearnkit.curvature import fisher_diagonal

    torch.manual_seed(0)
    model = build_model("char-transformer", vocab_size=12, seq_len=8, width=4, depth=1, heads=2).double().eval()
    x = torch.randint(0, 12, (2, 3))
    y = torch.randint(0, 12, (2, 3))
    params = {k: v.detach() for k, v in model.named_parameters()}
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for i in range(2):
        jac = jacrev(lambda p: functional_call(model, p, (x[i : i + 1],))[0])(params)  # {name: (T, V, *shape)}
        probs = torch.softmax(model(x[i : i + 1])[0], -1).detach()
        for name, j in jac.items():
            j = j.reshape(3, 12, -1)
            for t in range(3):
                cov = torch.diag(probs[t]) - probs[t][:, None] * probs[t][None, :]
                expected[name] += torch.einsum("vp,vw,wp->p", j[t], cov, j[t]).view_as(expected[name]) / (3 * 2)
    exact = fisher_diagonal(model, (x, y), kind="exact")
    for name in params:
        assert torch.allclose(exact[name], expected[name], atol=1e-10), name
    sampled = fisher_diagonal(
        model, (x, y), kind="sampled", mc_samples=4000, generator=torch.Generator().manual_seed(1)
    )
    flat_s = torch.cat([sampled[n].flatten() for n in params])
    flat_e = torch.cat([expected[n].flatten() for n in params])
    assert float((flat_s - flat_e).norm() / flat_e.norm()) < 0.1
