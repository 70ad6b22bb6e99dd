"""Unit tests for ckadistill.losses: each property against an independent reference."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ckadistill.losses import (
    HiddenProjection,
    cka_loss,
    cosine_hidden_loss,
    gram_cka,
    kl_logits_loss,
    layer_pair_rows,
    linear_cka,
    mean_pool,
    projected_mse_loss,
    select_tokens,
    token_cross_entropy,
)

F64 = torch.float64


# ----------------------------------------------------------------------------- independent references


def np_centred_gram(gram: np.ndarray) -> np.ndarray:
    """`H K H` with an explicit centring matrix."""
    n = gram.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return h @ gram @ h


def np_cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    kc, lc = np_centred_gram(k), np_centred_gram(l)
    return float((kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc)))


def np_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Float64 Gram-form linear CKA, written without any torch."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    return np_cka_from_grams(x @ x.T, y @ y.T)


def np_rbf_gram(x: np.ndarray, sigma: float) -> np.ndarray:
    """RBF Gram matrix with bandwidth sigma * median distance between distinct points, step by step."""
    n = x.shape[0]
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # (n, n)
    pairs = dist[np.triu_indices(n, k=1)]
    bandwidth = sigma * np.median(pairs)
    return np.exp(-(dist**2) / (2 * bandwidth**2))


def np_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), eq. (5), term by term."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    trace_term = np.trace(kt @ lt)
    sums_term = (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
    cross_term = 2.0 / (n - 2) * (one @ kt @ lt @ one)
    return float((trace_term + sums_term - cross_term) / (n * (n - 3)))


def np_cka_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    return np_hsic_unbiased(k, l) / math.sqrt(np_hsic_unbiased(k, k) * np_hsic_unbiased(l, l))


def related_pair(n: int, d_s: int, d_t: int, *, seed: int = 0, noise: float = 1.0, dtype=torch.float32):
    """A student/teacher pair that shares a signal, so CKA sits well inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_s, generator=g, dtype=dtype)
    y = x @ torch.randn(d_s, d_t, generator=g, dtype=dtype) + noise * torch.randn(
        n, d_t, generator=g, dtype=dtype
    )
    return x, y


def orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))[0]


# ----------------------------------------------------------------------------- linear CKA


@pytest.mark.parametrize(
    ("b", "t", "d_s", "d_t", "seed"), [(2, 7, 5, 9, 0), (3, 16, 24, 8, 1), (4, 33, 32, 64, 2)]
)
def test_linear_cka_matches_numpy_gram_reference(b, t, d_s, d_t, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d_s, generator=g)
    y = torch.tanh(x @ torch.randn(d_s, d_t, generator=g)) + 0.5 * torch.randn(b, t, d_t, generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[:, 0] = True
    keep = mask.numpy().reshape(-1)
    expected = np_linear_cka(x.numpy().reshape(-1, d_s)[keep], y.numpy().reshape(-1, d_t)[keep])
    assert 0.05 < expected < 0.99  # a non-trivial case
    assert linear_cka(x, y, mask).item() == pytest.approx(expected, abs=1e-5)
    assert linear_cka(x.double(), y.double(), mask, dtype=F64).item() == pytest.approx(expected, abs=1e-12)


def test_cka_of_a_representation_with_itself_is_one():
    x, _ = related_pair(100, 16, 16, seed=3)
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert gram_cka(x, x).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("side", ["x", "y"])
def test_linear_cka_invariant_to_rotation_isotropic_scaling_translation(side):
    x, y = related_pair(64, 6, 10, seed=4, dtype=F64)
    base = linear_cka(x, y, dtype=F64).item()
    h = x if side == "x" else y
    d = h.shape[1]
    transforms = {
        "rotation": h @ orthogonal(d, seed=5),
        "scaling": 7.3 * h,
        "tiny scaling": 1e-4 * h,
        "translation": h + torch.linspace(-50, 50, d, dtype=F64),
    }
    for name, moved in transforms.items():
        value = linear_cka(moved, y, dtype=F64) if side == "x" else linear_cka(x, moved, dtype=F64)
        assert value.item() == pytest.approx(base, abs=1e-10), name


def test_linear_cka_not_invariant_to_per_feature_scaling():
    x, y = related_pair(200, 8, 12, seed=6, dtype=F64)
    stretched = x * torch.logspace(-2, 2, 8, dtype=F64)  # one scale per feature
    before, after = linear_cka(x, y, dtype=F64).item(), linear_cka(stretched, y, dtype=F64).item()
    assert abs(before - after) > 0.05
    assert after == pytest.approx(np_linear_cka(stretched.numpy(), y.numpy()), abs=1e-10)


def test_masked_call_equals_call_on_kept_rows():
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(3, 10, 6, generator=g), torch.randn(3, 10, 4, generator=g)
    mask = torch.zeros(3, 10, dtype=torch.long)
    mask[0, :10], mask[1, :3], mask[2, :6] = 1, 1, 1  # right padding, as tokenizers produce
    kept_x, kept_y = x[mask.bool()], y[mask.bool()]  # (19, d)
    assert linear_cka(x, y, mask).item() == pytest.approx(linear_cka(kept_x, kept_y).item(), abs=1e-7)
    # Padding content must not matter.
    x_noisy = torch.where(mask.bool()[..., None], x, 1e4 * torch.randn_like(x))
    assert linear_cka(x_noisy, y, mask).item() == pytest.approx(linear_cka(kept_x, kept_y).item(), abs=1e-7)
    assert gram_cka(x, y, mask).item() == pytest.approx(gram_cka(kept_x, kept_y).item(), abs=1e-12)


def test_mean_pool_averages_real_tokens_in_both_layouts():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = torch.stack([h[0].mean(0), h[1, :2].mean(0), h[2, 0]])  # (3, 4)
    torch.testing.assert_close(mean_pool(h, mask), expected)
    rows, lengths = select_tokens(h, mask), mask.sum(dim=1)  # (8, 4), the layout of cached teacher rows
    torch.testing.assert_close(mean_pool(rows, lengths=lengths), expected)
    torch.testing.assert_close(mean_pool(h), h.mean(dim=1))
    with pytest.raises(ValueError, match="lengths sum to 7"):
        mean_pool(rows, lengths=torch.tensor([5, 1, 1]))
    with pytest.raises(ValueError, match="rows with lengths"):
        mean_pool(rows)


def test_layer_pair_rows_select_the_same_tokens_for_every_pair():
    g = torch.Generator().manual_seed(12)
    student = [torch.randn(3, 5, 4, generator=g) for _ in range(3)]
    teacher = [torch.randn(3, 5, 6, generator=g) for _ in range(5)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pairs = [(0, 0), (1, 2), (2, 4)]
    rows = layer_pair_rows(student, teacher, pairs, mask)
    for (s, t), (x, y) in zip(pairs, rows, strict=True):
        assert torch.equal(x, select_tokens(student[s], mask)) and x.shape == (9, 4)
        assert torch.equal(y, select_tokens(teacher[t], mask)) and y.shape == (9, 6)
    assert [x.shape[0] for x, _ in layer_pair_rows(student, teacher, pairs)] == [15, 15, 15]
    with pytest.raises(ValueError, match="does not match hidden states"):
        layer_pair_rows(student, teacher, pairs, mask[:, :4])


def test_linear_cka_gradient_matches_autograd_of_the_plain_formula():
    # The closed-form backward against autograd through the three products, for x alone and for both.
    x, y = related_pair(50, 6, 9, seed=13, dtype=F64)
    for both in (False, True):
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(both)
        linear_cka(a, b, dtype=F64).backward()
        ref_a, ref_b = x.clone().requires_grad_(True), y.clone().requires_grad_(both)
        xc, yc = ref_a - ref_a.mean(0), ref_b - ref_b.mean(0)
        plain = (yc.T @ xc).pow(2).sum() / (
            torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
        )
        plain.backward()
        assert torch.allclose(a.grad, ref_a.grad, atol=1e-12)
        assert (b.grad is None) == (not both)
        if both:
            assert torch.allclose(b.grad, ref_b.grad, atol=1e-12)


def test_linear_cka_stays_fp32_under_autocast():
    x, y = related_pair(300, 16, 24, seed=14)
    reference = linear_cka(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = linear_cka(x, y)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference.item(), abs=1e-6)


def test_gradcheck_linear_cka():
    x, y = related_pair(7, 3, 4, seed=8, dtype=F64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: linear_cka(a, b, dtype=F64), (x, y))


@pytest.mark.parametrize(
    "options", [{"kernel": "linear"}, {"kernel": "rbf"}, {"kernel": "rbf", "sigma": 0.7}, {"unbiased": True}]
)
def test_gradcheck_gram_cka(options):
    x, y = related_pair(7, 3, 4, seed=9, dtype=F64)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: gram_cka(a, b, **options), (x, y))


@pytest.mark.parametrize(("low", "n"), [(torch.bfloat16, 1024), (torch.float16, 4096)])
def test_low_precision_inputs_match_fp32(low, n):
    x, y = related_pair(n, 64, 128, seed=10, noise=3.0)
    x, y = 10 * x, 10 * y  # activations of realistic magnitude
    if low == torch.float16:
        assert torch.isinf(x.half().T @ x.half()).any()  # a naive fp16 covariance overflows here
    reference = linear_cka(x, y).item()
    value = linear_cka(x.to(low), y.to(low))
    assert value.dtype == torch.float32
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(reference, abs=1e-2)
    x_low = x.to(low).requires_grad_(True)
    linear_cka(x_low, y.to(low)).backward()
    assert torch.isfinite(x_low.grad.float()).all()


def degenerate_cases():
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(12, 5, generator=g)
    yield "constant x", torch.full((12, 5), 3.0), noise
    yield "constant y", noise, torch.zeros(12, 5)
    yield "identical rows", torch.randn(1, 5, generator=g).repeat(12, 1), noise
    yield "some constant features", torch.cat([noise[:, :2], torch.ones(12, 3)], dim=1), noise


@pytest.mark.parametrize(
    "cka", [linear_cka, gram_cka, lambda a, b: gram_cka(a, b, kernel="rbf")], ids=["linear", "gram", "rbf"]
)
def test_degenerate_inputs_give_finite_value_and_gradient(cka):
    for name, x, y in degenerate_cases():
        x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        value = cka(x, y)
        value.backward()
        assert math.isfinite(value.item()), name
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all(), name
        if name != "some constant features":
            assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_cka_rejects_too_few_tokens_and_mismatched_tokens():
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    one_token = torch.zeros(2, 3)
    one_token[0, 0] = 1
    for cka in (linear_cka, gram_cka):
        with pytest.raises(ValueError, match="at least 2"):
            cka(x, y, one_token)
        with pytest.raises(ValueError, match="at least 2"):
            cka(torch.randn(1, 4), torch.randn(1, 6))
        with pytest.raises(ValueError, match="same tokens"):
            cka(torch.randn(5, 4), torch.randn(6, 4))
    with pytest.raises(ValueError, match="mask has"):
        linear_cka(x, y, torch.ones(2, 4))
    with pytest.raises(ValueError, match="at least 4"):
        gram_cka(torch.randn(3, 4), torch.randn(3, 4), unbiased=True)
    with pytest.raises(ValueError, match="kernel"):
        gram_cka(x, y, kernel="cosine")
    with pytest.raises(ValueError, match="sigma only"):
        gram_cka(x, y, sigma=1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gram_cka(x, y, kernel="rbf", sigma=0.0)


# ----------------------------------------------------------------------------- Gram form


@pytest.mark.parametrize(("n", "d_s", "d_t"), [(5, 3, 7), (40, 16, 8), (100, 64, 32)])
def test_gram_cka_linear_agrees_with_linear_cka(n, d_s, d_t):
    x, y = related_pair(n, d_s, d_t, seed=n, dtype=F64)
    assert gram_cka(x, y).item() == pytest.approx(linear_cka(x, y, dtype=F64).item(), abs=1e-12)
    assert gram_cka(x, y, dtype=torch.float32).item() == pytest.approx(linear_cka(x, y).item(), abs=1e-5)


def test_rbf_gram_on_four_points_by_hand():
    # Student: four points on a line; teacher: the same points with the last one pulled away.
    x = np.array([[0.0], [1.0], [2.0], [4.0]])
    y = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [2.0, 5.0]])
    # Distances between distinct x points: 1, 2, 4, 1, 3, 2 -> median (2 + 2) / 2 = 2.
    bandwidth = 2.0
    dist_x = np.abs(x - x.T)
    k = np.exp(-(dist_x**2) / (2 * bandwidth**2))
    assert k[0, 1] == pytest.approx(math.exp(-1 / 8))
    assert np.allclose(k, np_rbf_gram(x, 1.0))
    expected = np_cka_from_grams(k, np_rbf_gram(y, 1.0))
    value = gram_cka(torch.tensor(x), torch.tensor(y), kernel="rbf").item()
    assert value == pytest.approx(expected, abs=1e-12)
    assert 0.0 < value < 1.0
    for sigma in (0.5, 2.0):
        expected = np_cka_from_grams(np_rbf_gram(x, sigma), np_rbf_gram(y, sigma))
        assert gram_cka(torch.tensor(x), torch.tensor(y), kernel="rbf", sigma=sigma).item() == pytest.approx(
            expected, abs=1e-12
        )


def test_rbf_gram_with_wide_bandwidth_tends_to_linear():
    # exp(-d²/2σ²) ≈ 1 - d²/2σ², and double centring turns -d²/2 into the linear Gram matrix.
    x, y = related_pair(30, 5, 7, seed=12, dtype=F64)
    wide = gram_cka(x, y, kernel="rbf", sigma=1e3).item()
    assert wide == pytest.approx(linear_cka(x, y, dtype=F64).item(), abs=1e-5)
    assert abs(gram_cka(x, y, kernel="rbf", sigma=0.3).item() - wide) > 1e-3


@pytest.mark.parametrize("n", [4, 6, 15])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_unbiased_cka_matches_song_estimator(n, kernel):
    x, y = related_pair(n, 3, 5, seed=13 + n, dtype=F64)
    xn, yn = x.numpy(), y.numpy()
    if kernel == "linear":
        k, l = xn @ xn.T, yn @ yn.T  # noqa: E741
    else:
        k, l = np_rbf_gram(xn, 1.0), np_rbf_gram(yn, 1.0)  # noqa: E741
    expected = np_cka_unbiased(k, l)
    value = gram_cka(x, y, kernel=kernel, unbiased=True).item()
    assert value == pytest.approx(expected, abs=1e-10)
    assert value != pytest.approx(gram_cka(x, y, kernel=kernel).item(), abs=1e-4)


def test_unbiased_cka_on_four_points_in_exact_arithmetic():
    # Four 1-D integer points, linear kernel: Song et al.'s estimator evaluated with exact fractions.
    xs, ys = [0, 1, 2, 4], [0, 3, 1, 2]

    def hsic(a: list[int], b: list[int]) -> Fraction:
        n = len(a)
        k = [[Fraction(a[i] * a[j]) if i != j else Fraction(0) for j in range(n)] for i in range(n)]
        l = [[Fraction(b[i] * b[j]) if i != j else Fraction(0) for j in range(n)] for i in range(n)]  # noqa: E741
        trace = sum(k[i][j] * l[j][i] for i in range(n) for j in range(n))
        sum_k, sum_l = sum(map(sum, k)), sum(map(sum, l))
        kl_sum = sum(k[i][j] * l[j][m] for i in range(n) for j in range(n) for m in range(n))
        return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - Fraction(2, n - 2) * kl_sum) / (n * (n - 3))

    h_xy, h_xx, h_yy = hsic(xs, ys), hsic(xs, xs), hsic(ys, ys)
    assert (h_xy, h_xx, h_yy) == (Fraction(-4, 3), Fraction(14, 3), Fraction(13, 6))
    expected = -4 / math.sqrt(91)  # h_xy / sqrt(h_xx h_yy) = (-4/3) / sqrt(91/9)
    x = torch.tensor(xs, dtype=F64)[:, None]
    y = torch.tensor(ys, dtype=F64)[:, None]
    assert gram_cka(x, y, unbiased=True).item() == pytest.approx(expected, abs=1e-12)
    # The biased estimator is the squared correlation here: 2.5² / (8.75 · 5) = 1/7, while the unbiased
    # one (high variance at n = 4) is negative.
    assert gram_cka(x, y).item() == pytest.approx(1 / 7, abs=1e-12)


# ----------------------------------------------------------------------------- properties


@st.composite
def token_pairs(draw):
    n = draw(st.integers(2, 40))
    d_s, d_t = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale_x, scale_y = 10.0 ** draw(st.integers(-3, 3)), 10.0 ** draw(st.integers(-3, 3))
    x = scale_x * torch.randn(n, d_s, generator=g)
    mix = draw(st.floats(0.0, 1.0))
    shared = x[:, :1].repeat(1, d_t) / scale_x
    y = scale_y * (mix * shared + (1 - mix) * torch.randn(n, d_t, generator=g))
    if draw(st.booleans()):  # duplicated rows and a constant feature: near-degenerate inputs
        x[n // 2 :] = x[0]
        y[:, 0] = 1.0
    return x, y


@settings(max_examples=60, deadline=None)
@given(token_pairs())
def test_cka_bounded_and_symmetric(pair):
    x, y = pair
    forward, backward = linear_cka(x, y), linear_cka(y, x)
    assert 0.0 <= forward.item() <= 1.0
    assert forward.item() == pytest.approx(backward.item(), abs=1e-5)
    gram = gram_cka(x, y).item()
    assert -1e-12 <= gram <= 1.0 + 1e-12
    assert gram == pytest.approx(gram_cka(y, x).item(), abs=1e-10)
    assert gram == pytest.approx(forward.item(), abs=1e-4)


def test_cka_loss_both_forms():
    x, y = related_pair(50, 8, 6, seed=14)
    cka = linear_cka(x, y).item()
    assert 0.1 < cka < 0.9
    assert cka_loss(x, y).item() == pytest.approx(1.0 - cka, abs=1e-7)
    assert cka_loss(x, y, sqrt=True).item() == pytest.approx(1.0 - math.sqrt(cka), abs=1e-7)
    assert cka_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert cka_loss(x.double(), y.double(), dtype=F64).item() == pytest.approx(1.0 - cka, abs=1e-6)
    x0 = torch.zeros(10, 3, requires_grad=True)  # CKA = 0: the sqrt form must not blow up
    cka_loss(x0, torch.randn(10, 3), sqrt=True).backward()
    assert torch.isfinite(x0.grad).all()


# ----------------------------------------------------------------------------- baselines


def test_cosine_hidden_loss_value_and_mask():
    g = torch.Generator().manual_seed(15)
    x, y = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    xs, ys = x[mask.bool()].numpy(), y[mask.bool()].numpy()
    cos = (xs * ys).sum(-1) / (np.linalg.norm(xs, axis=-1) * np.linalg.norm(ys, axis=-1))
    assert cosine_hidden_loss(x, y, mask).item() == pytest.approx(float((1 - cos).mean()), abs=1e-6)
    assert cosine_hidden_loss(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert cosine_hidden_loss(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    assert cosine_hidden_loss(x.bfloat16(), y.bfloat16()).dtype == torch.float32
    x_grad = x.clone().requires_grad_(True)
    empty = cosine_hidden_loss(x_grad, y, torch.zeros(2, 5))
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(x_grad.grad, torch.zeros_like(x))


def test_cosine_hidden_loss_rejects_different_widths():
    with pytest.raises(ValueError, match=r"'cka'.*'mse_proj'"):
        cosine_hidden_loss(torch.randn(4, 8), torch.randn(4, 16))


def test_projected_mse_matches_manual_and_trains_the_projection():
    torch.manual_seed(16)
    proj = HiddenProjection(6, 10)
    x, y = torch.randn(2, 4, 6), torch.randn(2, 4, 10)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    w, b = proj.linear.weight.detach().numpy(), proj.linear.bias.detach().numpy()
    xs, ys = x[mask.bool()].numpy(), y[mask.bool()].numpy()
    expected = float(((xs @ w.T + b - ys) ** 2).mean())
    loss = projected_mse_loss(x, y, proj, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    grad = proj.linear.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    manual_grad = 2 * (xs @ w.T + b - ys).T @ xs / ys.size  # d mean((xWᵀ + b - y)²) / dW
    assert np.allclose(grad.numpy(), manual_grad, atol=1e-6)
    assert projected_mse_loss(x.bfloat16(), y.bfloat16(), proj).dtype == torch.float32
    assert projected_mse_loss(x, y, proj, torch.zeros(2, 4)).item() == 0.0


def test_projection_rejects_wrong_widths():
    with pytest.raises(ValueError, match="d_student"):
        projected_mse_loss(torch.randn(4, 5), torch.randn(4, 10), HiddenProjection(6, 10))
    with pytest.raises(ValueError, match="d_teacher"):
        projected_mse_loss(torch.randn(4, 6), torch.randn(4, 12), HiddenProjection(6, 10))
    with pytest.raises(ValueError, match="widths must be"):
        HiddenProjection(0, 10)


def np_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) along the last axis."""
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return (p * (np.log(p) - np.log(q))).sum(-1)


def test_kl_zero_for_equal_logits():
    z = torch.randn(4, 7, 11)
    assert kl_logits_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_logits_loss(z, z.clone(), reverse=True, temperature=3.0).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("shape", [(5, 3), (2, 6, 13)])
def test_kl_matches_manual_forward_reverse_and_temperature(shape):
    g = torch.Generator().manual_seed(17)
    s, t = 2 * torch.randn(*shape, generator=g), 2 * torch.randn(*shape, generator=g)
    sn, tn = s.double().numpy(), t.double().numpy()
    forward = np_kl(tn, sn).mean()
    reverse = np_kl(sn, tn).mean()
    assert kl_logits_loss(s, t).item() == pytest.approx(forward, rel=1e-5)
    assert kl_logits_loss(s, t, reverse=True).item() == pytest.approx(reverse, rel=1e-5)
    assert abs(forward - reverse) > 1e-3
    softened = np_kl(tn / 2.5, sn / 2.5).mean()
    assert kl_logits_loss(s, t, temperature=2.5).item() == pytest.approx(2.5**2 * softened, rel=1e-5)
    assert kl_logits_loss(s.half(), t.half()).dtype == torch.float32


def test_kl_ignores_masked_positions():
    g = torch.Generator().manual_seed(18)
    s, t = torch.randn(2, 5, 9, generator=g), torch.randn(2, 5, 9, generator=g)
    labels = torch.tensor([[3, 1, -100, -100, -100], [4, 2, 8, 0, -100]])
    mask = labels != -100
    expected = np_kl(t[mask].double().numpy(), s[mask].double().numpy()).mean()
    s_junk = s.clone()
    s_junk[~mask] = float("nan")  # whatever sits at masked positions cannot leak in
    s_junk.requires_grad_(True)
    loss = kl_logits_loss(s_junk, t, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.equal(s_junk.grad[~mask], torch.zeros_like(s_junk.grad[~mask]))
    assert torch.isfinite(s_junk.grad).all()
    class_mask = torch.tensor([True, False])
    assert kl_logits_loss(s[:, 0], t[:, 0], class_mask).item() == pytest.approx(
        np_kl(t[0, 0].double().numpy(), s[0, 0].double().numpy()).item(), rel=1e-5
    )


def test_kl_all_masked_is_zero_without_nan_gradient():
    s = torch.randn(2, 4, 6, requires_grad=True)
    loss = kl_logits_loss(s, torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_kl_rejects_bad_inputs():
    with pytest.raises(ValueError, match="vocabulary"):
        kl_logits_loss(torch.randn(2, 5), torch.randn(2, 6))
    with pytest.raises(ValueError, match="temperature"):
        kl_logits_loss(torch.randn(2, 5), torch.randn(2, 5), temperature=0.0)
    with pytest.raises(ValueError, match="mask shape"):
        kl_logits_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        kl_logits_loss(torch.randn(5), torch.randn(5))


# ----------------------------------------------------------------------------- token-level, in chunks


def _value_and_grad(fn, logits):
    logits = logits.detach().clone().requires_grad_(True)
    value = fn(logits)
    (grad,) = torch.autograd.grad(value, logits)
    return value.detach(), grad


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 100])
@pytest.mark.parametrize(("temperature", "reverse"), [(1.0, False), (2.0, True)])
def test_chunked_kl_equals_unchunked_value_and_gradient(chunk_size, temperature, reverse):
    g = torch.Generator().manual_seed(21)
    s, t = 2 * torch.randn(3, 5, 13, generator=g), 2 * torch.randn(3, 5, 13, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)  # 10 of 15

    def kl(chunk):
        return lambda z: kl_logits_loss(
            z, t, mask, temperature=temperature, reverse=reverse, chunk_size=chunk
        )

    whole, whole_grad = _value_and_grad(kl(None), s)
    chunked, chunked_grad = _value_and_grad(kl(chunk_size), s)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked_grad, whole_grad)
    reference = np_kl(*(z[mask].double().numpy() / temperature for z in ((s, t) if reverse else (t, s))))
    assert whole.item() == pytest.approx(temperature**2 * reference.mean(), rel=1e-5)
    with torch.no_grad():  # no recomputation needed, same value
        torch.testing.assert_close(kl(chunk_size)(s), whole)


def test_chunked_kl_all_masked_is_zero_with_zero_gradient_even_over_nan():
    s = torch.full((2, 4, 6), float("nan"), requires_grad=True)
    loss = kl_logits_loss(s, torch.randn(2, 4, 6), torch.zeros(2, 4, dtype=torch.bool), chunk_size=3)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        kl_logits_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 5), chunk_size=0)


@pytest.mark.parametrize("chunk_size", [None, 2, 5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_token_cross_entropy_matches_torch_with_ignore_index(chunk_size, label_smoothing):
    g = torch.Generator().manual_seed(22)
    logits = torch.randn(3, 4, 9, generator=g)
    labels = torch.randint(0, 9, (3, 4), generator=g)
    labels[0, 2:] = -100
    labels[2, 1] = -100  # a hole, not only trailing padding

    def reference(z):
        return F.cross_entropy(z.transpose(1, 2), labels, ignore_index=-100, label_smoothing=label_smoothing)

    def ours(z):
        return token_cross_entropy(z, labels, label_smoothing=label_smoothing, chunk_size=chunk_size)

    expected, expected_grad = _value_and_grad(reference, logits)
    value, grad = _value_and_grad(ours, logits)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert ours(logits.half()).dtype == torch.float32


def test_token_cross_entropy_without_targets_is_zero_with_zero_gradient():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = token_cross_entropy(logits, torch.full((2, 3), -100), chunk_size=2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="must match the logits' positions"):
        token_cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long))


def test_chunks_are_recomputed_not_kept_for_the_backward():
    """Under checkpointing the graph holds no (chunk, V) fp32 intermediates, only the inputs."""
    s = torch.randn(8, 50, requires_grad=True)
    t = torch.randn(8, 50)
    saved = []

    def pack(x):
        saved.append(x.shape)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kl_logits_loss(s, t, chunk_size=2)
    assert (2, 50) not in saved  # unchunked, the fp32 log-softmax of every chunk would be saved
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        kl_logits_loss(s, t)
    assert (8, 50) in saved  # the reference: without chunks the (n, V) intermediates are kept
