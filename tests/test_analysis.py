"""Known answers for the paper's maths: subspace similarity φ and the W0 → A / B conversion matrices."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from condlora import AdapterConfig, adapter_layers, apply_adapter, conversion_matrices, subspace_similarity
from condlora.analysis import (
    ConditioningWarning,
    RankError,
    mean_off_diagonal,
    product_left_vectors,
    random_conversions,
    similarity_matrix,
)
from condlora.inject import module_type
from conftest import tiny_bert, tiny_llama


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def well_conditioned(d_out, d_in, seed=0):
    """A random matrix with singular values in [1, 3]."""
    u, _ = torch.linalg.qr(randn(d_out, d_out, seed=seed))
    v, _ = torch.linalg.qr(randn(d_in, d_in, seed=seed + 1))
    k = min(d_out, d_in)
    return u[:, :k] @ torch.diag(torch.linspace(1, 3, k, dtype=torch.float64)) @ v[:, :k].T


@pytest.mark.parametrize("side", ["left", "right"])
def test_identical_matrices_have_similarity_one(side):
    x = randn(40, 6)
    x = x if side == "left" else x.T
    assert subspace_similarity(x, x, 6, 6, side) == pytest.approx(1.0, abs=1e-12)
    assert subspace_similarity(x, x, 2, 5, side) == pytest.approx(1.0, abs=1e-12)  # nested top subspaces


@pytest.mark.parametrize("side", ["left", "right"])
def test_orthogonal_spaces_have_similarity_zero(side):
    q, _ = torch.linalg.qr(randn(30, 30))
    x, y = q[:, :4] @ randn(4, 4, seed=1), q[:, 4:10] @ randn(6, 5, seed=2)
    if side == "right":
        x, y = x.T, y.T
    assert subspace_similarity(x, y, 4, 5, side) == pytest.approx(0.0, abs=1e-12)


def test_half_shared_subspace_gives_one_half():
    e = torch.eye(10, dtype=torch.float64)
    x, y = e[:, [0, 1]] * torch.tensor([3.0, 2.0]), e[:, [0, 2]] * torch.tensor([3.0, 2.0])
    assert subspace_similarity(x, y, 2, 2) == pytest.approx(0.5, abs=1e-12)
    assert subspace_similarity(x, y, 1, 1) == pytest.approx(1.0, abs=1e-12)  # top vectors are both e0


def test_invariant_to_scaling_and_invertible_right_factor():
    x, y, g = randn(30, 5, seed=3), randn(30, 5, seed=4), randn(5, 5, seed=5)
    base = subspace_similarity(x, y, 5, 3)
    assert 0.01 < base < 0.99
    assert subspace_similarity(7.5 * x, y, 5, 3) == pytest.approx(base, abs=1e-12)
    assert subspace_similarity(x @ g, y, 5, 3) == pytest.approx(base, abs=1e-10)
    assert subspace_similarity(g.T @ x.T, y.T, 5, 3, side="right") == pytest.approx(base, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(1, 4))
def test_similarity_is_in_unit_interval_and_symmetric(seed, i, j):
    x, y = randn(12, 4, seed=seed), randn(12, 4, seed=seed + 1)
    phi = subspace_similarity(x, y, i, j)
    assert -1e-12 <= phi <= 1 + 1e-12
    assert phi == pytest.approx(subspace_similarity(y, x, j, i), abs=1e-12)


def test_rank_errors_are_clear():
    x = randn(20, 4)
    with pytest.raises(RankError, match="has 4 singular vectors; asked for 5"):
        subspace_similarity(x, x, 5, 2)
    low = randn(20, 2) @ randn(2, 6, seed=1)
    with pytest.raises(RankError, match="numerical rank 2"):
        subspace_similarity(low, low, 2, 3)
    with pytest.raises(RankError, match="all zeros"):
        subspace_similarity(x, torch.zeros(20, 4), 1, 1)
    with pytest.raises(ValueError, match="different spaces"):
        subspace_similarity(x, randn(21, 4), 1, 1)
    with pytest.raises(ValueError, match="side"):
        subspace_similarity(x, x, 1, 1, side="middle")


def test_random_gaussian_pairs_are_dissimilar():
    phis = [subspace_similarity(randn(768, 8, seed=s), randn(768, 8, seed=s + 100), 8, 8) for s in range(10)]
    assert max(phis) < 0.05
    assert 0.005 < sum(phis) / len(phis) < 0.02  # about r / d = 8 / 768


def test_random_baseline_through_the_pipeline():
    convs = random_conversions(384, 384, 8, 3, seed=0)  # expected φ about r / d = 0.02
    phi = similarity_matrix([c.to_A for c in convs], 8)
    assert torch.allclose(phi.diagonal(), torch.ones(3, dtype=torch.float64))
    assert mean_off_diagonal(phi) < 0.05
    assert mean_off_diagonal(similarity_matrix([c.to_B for c in convs], 8)) < 0.05


def test_random_adapter_on_an_anisotropic_w0_is_not_a_random_baseline():
    w0 = well_conditioned(64, 64) @ torch.diag(torch.logspace(0, -6, 64, dtype=torch.float64))
    real = random_conversions(64, 64, 4, 3, seed=1, w0s=[w0] * 3)  # W0⁻¹ favours W0's weakest directions
    fake = random_conversions(64, 64, 4, 3, seed=1)
    assert mean_off_diagonal(similarity_matrix([c.to_A for c in real], 4)) > 0.4
    assert mean_off_diagonal(similarity_matrix([c.to_A for c in fake], 4)) < 0.15  # about r / d = 0.06


def test_mean_off_diagonal():
    phi = torch.tensor([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert mean_off_diagonal(phi) == pytest.approx(0.4)


def test_planted_square_conversion_is_recovered(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the inverse must never be formed")

    monkeypatch.setattr(torch.linalg, "inv", forbidden)
    monkeypatch.setattr(torch.linalg, "pinv", forbidden)
    w0, c_a, c_b = randn(50, 50), randn(50, 4, seed=1), randn(50, 4, seed=2)
    a, b = (w0 @ c_a).T, w0 @ c_b
    conv = conversion_matrices(w0, a, b)
    assert conv.form == "paper"
    torch.testing.assert_close(conv.to_A, c_a, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(conv.to_B, c_b, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(conv.to_delta, c_b @ a, atol=1e-8, rtol=1e-8)
    assert conv.residual_A < 1e-12 and conv.residual_B < 1e-12
    s = torch.linalg.svdvals(w0)
    assert conv.cond == pytest.approx(float(s[0] / s[-1]))


def test_rectangular_least_squares_recovers_planted_matrices():
    tall = well_conditioned(60, 40)  # W0·C = B overdetermined: exact; W0ᵀ·C = Aᵀ underdetermined: min-norm
    c_b, c_a = randn(40, 3, seed=1), randn(60, 3, seed=2)
    a, b = (tall.T @ c_a).T, tall @ c_b
    conv = conversion_matrices(tall, a, b)
    assert conv.form == "general" and conv.to_A.shape == (60, 3) and conv.to_B.shape == (40, 3)
    torch.testing.assert_close(conv.to_B, c_b, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(tall.T @ conv.to_A, a.T, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(conv.to_A, torch.linalg.pinv(tall.T) @ a.T, atol=1e-10, rtol=1e-10)
    assert conv.cond == pytest.approx(3.0)
    wide = tall.T.contiguous()  # 40 x 60: now A is exact and B is min-norm
    a2, b2 = (wide.T @ randn(40, 3, seed=3)).T, wide @ randn(60, 3, seed=4)
    conv2 = conversion_matrices(wide, a2, b2)
    torch.testing.assert_close(conv2.to_A, randn(40, 3, seed=3), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(conv2.to_B, torch.linalg.pinv(wide) @ b2, atol=1e-10, rtol=1e-10)


def test_rectangular_residual_when_b_is_outside_the_column_space():
    w0, b = well_conditioned(60, 40), randn(60, 3, seed=9)
    conv = conversion_matrices(w0, randn(3, 40, seed=8), b)
    torch.testing.assert_close(conv.to_B, torch.linalg.pinv(w0) @ b, atol=1e-10, rtol=1e-10)
    expected = (w0 @ conv.to_B - b).norm() / b.norm()
    assert 0.1 < conv.residual_B == pytest.approx(float(expected))


def test_ill_conditioned_w0_warns_and_a_good_one_does_not():
    w0 = torch.diag(torch.logspace(0, -8, 16))
    a, b = randn(2, 16, dtype=torch.float32), randn(16, 2, seed=1, dtype=torch.float32)
    with pytest.warns(ConditioningWarning, match="condition number 1e\\+08"):
        conversion_matrices(w0, a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conversion_matrices(well_conditioned(16, 16), a, b)


def test_bad_shapes_and_forms():
    with pytest.raises(ValueError, match="do not fit"):
        conversion_matrices(randn(8, 8), randn(2, 7), randn(8, 2))
    with pytest.raises(ValueError, match="square"):
        conversion_matrices(randn(8, 6), randn(2, 6), randn(8, 2), form="paper")


def test_product_vectors_match_the_full_svd():
    b, a, y = randn(40, 4, seed=1), randn(4, 30, seed=2), randn(40, 4, seed=3)
    fast = product_left_vectors(b, a, 4)
    full = subspace_similarity(b @ a, y, 4, 4)
    assert subspace_similarity(fast, y, 4, 4) == pytest.approx(full, abs=1e-10)
    assert subspace_similarity(fast, b @ a, 4, 4) == pytest.approx(1.0, abs=1e-10)
    with pytest.raises(RankError):
        product_left_vectors(b, a, 5)


def few_steps(model, ids, steps=3):
    """A few high-LR SGD steps on random labels so every trainable matrix moves."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(steps):
        out = model(input_ids=ids).logits
        loss = out.float().pow(2).mean() + out[..., 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def conversions_by_type(model, form="auto"):
    groups = {}
    with torch.no_grad():
        for name, layer in adapter_layers(model):
            a, b = layer.lora_AB()
            groups.setdefault(module_type(name), []).append(conversion_matrices(layer.w0(), a, b, form))
    return groups


def test_trained_condlora_paper_form_gives_the_same_conversion_in_every_layer(ids):
    model = apply_adapter(tiny_bert(), AdapterConfig(method="condlora", r=4, target_modules=["query", "value"],
                                                     cond_form="paper"))
    few_steps(model, ids)
    for type_name, convs in conversions_by_type(model).items():
        gen = model.condlora_generators[model.condlora_config.module_types[type_name]["key"]]
        assert gen.theta_B.abs().max() > 0
        for c in convs:
            torch.testing.assert_close(c.to_A, gen.theta_A.detach().double().T, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(c.to_B, gen.theta_B.detach().double().T, atol=1e-5, rtol=1e-4)
        for kind in ("to_A", "to_B"):
            phi = similarity_matrix([getattr(c, kind) for c in convs], 4)
            assert torch.allclose(phi, torch.ones_like(phi), atol=1e-8)


def test_trained_condlora_general_form_is_exact_on_the_overdetermined_side(ids):
    cfg = AdapterConfig(method="condlora", r=4, target_modules=["k_proj", "up_proj"])
    model = few_steps(apply_adapter(tiny_llama(), cfg), ids)
    gens = model.condlora_generators
    groups = conversions_by_type(model)
    k, up = groups["model.layers.*.self_attn.k_proj"], groups["model.layers.*.mlp.up_proj"]
    theta_k = gens["model_layers_self_attn_k_proj"].theta_A.detach().double().T  # k_proj W0 is 16 x 32: A exact
    theta_up = gens["model_layers_mlp_up_proj"].theta_B.detach().double()  # up_proj W0 is 48 x 32: B exact
    for c in k:
        torch.testing.assert_close(c.to_A, theta_k, atol=1e-5, rtol=1e-4)
    for c in up:
        torch.testing.assert_close(c.to_B, theta_up, atol=1e-5, rtol=1e-4)
    assert mean_off_diagonal(similarity_matrix([c.to_A for c in k], 4)) == pytest.approx(1.0, abs=1e-8)
    assert mean_off_diagonal(similarity_matrix([c.to_B for c in up], 4)) == pytest.approx(1.0, abs=1e-8)


def test_trained_lora_conversions_differ_across_layers(ids):
    model = few_steps(apply_adapter(tiny_bert(), AdapterConfig(method="lora", r=4)), ids)
    for convs in conversions_by_type(model).values():
        assert mean_off_diagonal(similarity_matrix([c.to_A for c in convs], 4)) < 0.9
