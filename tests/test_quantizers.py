"""Quantizer variants: shapes, index ranges, gradients, codebook learning, usage/perplexity, options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prostate_vq.errors import UserInputError
from prostate_vq.models.quantizers import (
    QUANTIZERS,
    build_quantizer,
    code_counts,
    nearest_code,
    perplexity,
    quantizer_options,
    usage,
)
from prostate_vq.models.quantizers.base import entropy_loss

DIM = 8
# A tiny instance of every registered kind, from its class (`Quantizer.small_options`): a new kind needs no edit here.
SMALL = {kind: {"kind": kind, **cls.small_options} for kind, cls in QUANTIZERS.items()}


def _setup(kind, seed=0):
    torch.manual_seed(seed)
    quantizer = build_quantizer(SMALL[kind], DIM).train()
    encoder = torch.nn.Conv2d(1, DIM, 1)
    x = torch.randn(2, 1, 4, 6)
    return quantizer, encoder, x


def test_every_kind_is_covered():
    assert set(SMALL) >= {"vq", "ema", "rq", "fsq", "lfq", "soft", "monai-ema"}
    assert all(cls.small_options for cls in QUANTIZERS.values())


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_shapes_ranges_and_gradients(kind):
    quantizer, encoder, x = _setup(kind)
    z = encoder(x)
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert out.indices.dtype == torch.long
    assert out.indices.shape == (2, *quantizer.index_shape(4, 6))
    assert int(out.indices.min()) >= 0
    per_level = quantizer.num_codes // (quantizer.depth if kind == "rq" else 1)
    assert int(out.indices.max()) < per_level
    counts = quantizer.code_counts(out.indices)
    assert counts.shape == (quantizer.num_codes,) and int(counts.sum()) == out.indices.numel()
    loss = out.quantized.pow(2).mean() + sum(out.losses.values(), torch.zeros(()))
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    for value in out.losses.values():
        assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("kind", ["vq", "soft", "ema", "rq"])
def test_codebook_changes_after_a_training_step(kind):
    quantizer, encoder, x = _setup(kind)
    before = {k: v.clone() for k, v in quantizer.state_dict().items()}
    optimizer = torch.optim.Adam(list(quantizer.parameters()) + list(encoder.parameters()), lr=1e-2)
    out = quantizer(encoder(x) + 3.0)  # shifted away from the initial codes
    loss = (out.quantized - 3.0).pow(2).mean() + sum(out.losses.values(), torch.zeros(()))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = [k for k, v in quantizer.state_dict().items() if v.shape != before[k].shape or not torch.equal(v, before[k])]
    assert any(("embed" in k) or ("embedding" in k) for k in changed), changed


@pytest.mark.parametrize("kind,code_dim,k", [("fsq", 2, 15), ("lfq", 4, 16)])
def test_implicit_codebook_is_fully_addressable(kind, code_dim, k):
    # dim == code dim: no projections, so the codes themselves can be fed back
    quantizer = build_quantizer(SMALL[kind], code_dim).eval()
    assert quantizer.num_codes == k
    every = torch.arange(k).reshape(1, 1, k)
    codes = quantizer.lookup(every)
    assert codes.shape == (1, code_dim, 1, k)
    assert torch.unique(codes[0, :, 0].t(), dim=0).shape[0] == k  # k distinct codes
    assert torch.equal(quantizer(codes).indices, every)  # each one is emitted for its own code
    z = torch.randn(64, code_dim, 8, 8) * 3  # random inputs reach every code
    assert usage(quantizer.code_counts(quantizer(z).indices)) == 1.0


def test_usage_and_perplexity_on_a_hand_built_batch():
    indices = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    counts = code_counts(indices, 8)
    assert counts.tolist() == [2, 2, 4, 0, 0, 0, 0, 0]
    assert usage(counts) == pytest.approx(3 / 8)
    p = torch.tensor([0.25, 0.25, 0.5])
    assert perplexity(counts) == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)


def test_rq_counts_each_level_in_its_own_range():
    quantizer = build_quantizer(SMALL["rq"], DIM)
    indices = torch.zeros(1, 3, 2, 2, dtype=torch.long)  # code 0 on every level
    counts = quantizer.code_counts(indices)
    assert counts.shape == (48,)
    assert counts[[0, 16, 32]].tolist() == [4, 4, 4] and int(counts.sum()) == 12


@pytest.mark.parametrize("n,k,max_elements", [(1000, 37, 512), (50, 7, 1 << 22), (3, 300, 10)])
def test_chunked_nearest_code_equals_cdist_argmin(n, k, max_elements):
    torch.manual_seed(1)
    z, codebook = torch.randn(n, 5), torch.randn(k, 5)
    expected = torch.cdist(z, codebook).argmin(1)
    assert torch.equal(nearest_code(z, codebook, max_elements=max_elements), expected)


def test_vq_losses_follow_the_paper():
    torch.manual_seed(0)
    q = build_quantizer({"kind": "vq", "codebook_size": 4, "beta": 0.5}, 2).train()
    z = torch.randn(1, 2, 2, 2)
    out = q(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    nearest = q.codebook[torch.cdist(vectors, q.codebook).argmin(1)]
    mse = F.mse_loss(nearest, vectors)
    assert out.losses["codebook"].item() == pytest.approx(mse.item(), rel=1e-5)
    assert out.losses["commitment"].item() == pytest.approx(0.5 * mse.item(), rel=1e-5)
    # straight-through: the forward value is the code, the gradient is the identity
    assert torch.allclose(out.quantized.permute(0, 2, 3, 1).reshape(-1, 2), nearest, atol=1e-6)


def test_ema_update_matches_the_formula():
    """The library's EMA: N = d N + (1-d) n, m = d m + (1-d) sum z, e = m / laplace(N)."""
    torch.manual_seed(0)
    decay, k = 0.5, 4
    q = build_quantizer({"kind": "ema", "codebook_size": k, "decay": decay}, 2).train()
    cb = q._codebook
    n0, m0 = cb.cluster_size[0].clone(), cb.embed_avg[0].clone()
    z = torch.randn(1, 2, 3, 3)
    out = q(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    onehot = F.one_hot(out.indices.reshape(-1), k).float()
    n = decay * n0 + (1 - decay) * onehot.sum(0)
    m = decay * m0 + (1 - decay) * onehot.t() @ vectors
    eps = 1e-5
    smoothed = (n + eps) / (n.sum() + k * eps) * n.sum()
    assert torch.allclose(cb.cluster_size[0], n, atol=1e-6)
    assert torch.allclose(q.codebook, m / smoothed[:, None], atol=1e-5)
    assert set(out.losses) == {"commitment"}


def test_eval_mode_leaves_codebooks_alone():
    for kind in ("ema", "vq", "rq"):
        quantizer, encoder, x = _setup(kind)
        quantizer.eval()
        before = {k: v.clone() for k, v in quantizer.state_dict().items()}
        with torch.no_grad():
            quantizer(encoder(x))
        assert all(torch.equal(v, before[k]) for k, v in quantizer.state_dict().items()), kind


@pytest.mark.parametrize("kind", ["vq", "ema"])
def test_dead_codes_restart_from_encoder_outputs(kind):
    torch.manual_seed(0)
    q = build_quantizer({"kind": kind, "codebook_size": 8, "dead_code_threshold": 1.0, "decay": 0.5}, 2).train()
    q.set_codebook(torch.cat([torch.zeros(1, 2), torch.full((7, 2), 100.0)]))  # 7 codes nobody picks
    z = torch.randn(1, 2, 4, 4)
    q(z)
    assert q.pop_restarted() >= 6 and q.pop_restarted() == 0
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 2)
    far = q.codebook.abs().max(1).values > 50
    assert int(far.sum()) <= 1  # restarted codes now sit on encoder outputs
    restarted = q.codebook[~far][1:]
    assert torch.cdist(restarted, vectors).min(1).values.max() < 1e-4


@pytest.mark.parametrize("kind", ["vq", "soft"])
def test_fresh_usage_counts_live_codes_as_alive(kind):
    """A fresh quantizer whose every code is in use restarts none at its first step (usage started at 0 made
    the first step's EMA, (1 - decay) x count, fall below the threshold: 498 of 512 live codes restarted)."""
    torch.manual_seed(0)
    q = build_quantizer({"kind": kind, "codebook_size": 16, "dead_code_threshold": 1.0, "decay": 0.99}, 2).train()
    assert torch.equal(q.usage_ema, torch.ones(16))
    codes = q.codebook.detach()
    z = codes.repeat(2, 1).t().reshape(1, 2, 4, 8)  # every code exactly twice
    q(z)
    assert q.pop_restarted() == 0


@pytest.mark.parametrize("kind", ["vq", "ema"])
def test_kmeans_init_on_first_batch(kind):
    torch.manual_seed(0)
    q = build_quantizer({"kind": kind, "codebook_size": 4, "kmeans_init": True}, 2).train()
    centres = torch.tensor([[5.0, 5.0], [-5.0, 5.0], [5.0, -5.0], [-5.0, -5.0]])
    vectors = centres.repeat_interleave(16, 0) + 0.01 * torch.randn(64, 2)
    z = vectors.reshape(1, 8, 8, 2).permute(0, 3, 1, 2)
    q(z)
    codebook = q.codebook.detach()
    assign = torch.cdist(vectors, codebook).argmin(1)
    assert assign.unique().numel() >= 3
    for code in assign.unique():  # a Lloyd fixed point: each used code is the mean of its vectors
        assert torch.allclose(codebook[code], vectors[assign == code].mean(0), atol=1e-3)


@pytest.mark.parametrize("kind", ["vq", "ema"])
def test_l2_and_low_dimensional_codes(kind):
    q = build_quantizer({"kind": kind, "codebook_size": 8, "codebook_dim": 3, "l2_normalize": True}, DIM).train()
    z = torch.randn(2, DIM, 2, 2)
    out = q(z)
    assert q.codebook.shape == (8, 3)
    assert torch.allclose(q.codebook.norm(dim=1), torch.ones(8), atol=1e-5)
    assert out.latents.shape == (2, 3, 2, 2)
    assert torch.allclose(out.latents.norm(dim=1), torch.ones(2, 2, 2), atol=1e-5)
    assert out.quantized.shape == z.shape


@pytest.mark.parametrize("kind", ["vq", "ema"])
def test_set_codebook_resizes(kind):
    q = build_quantizer({"kind": kind, "codebook_size": 16}, DIM).train()
    new = torch.randn(5, DIM)
    q.set_codebook(new)
    assert q.codebook_size == 5 and q.num_codes == 5 and q.codebook.shape == (5, DIM)
    assert torch.allclose(q.codebook, new)
    out = q.eval()(torch.randn(2, DIM, 3, 3))
    assert int(out.indices.max()) < 5
    with pytest.raises(ValueError):
        q.set_codebook(torch.randn(5, DIM + 1))


def test_entropy_regulariser():
    q = build_quantizer({"kind": "vq", "codebook_size": 8, "entropy_weight": 0.1}, DIM).train()
    out = q(torch.randn(2, DIM, 2, 2))
    assert "entropy" in out.losses
    # confident and spread over all K codes: per-vector entropy 0, batch entropy log K
    spread = torch.eye(8) * 100.0
    assert entropy_loss(spread, 1.0).item() == pytest.approx(-math.log(8), abs=1e-4)
    collapsed = torch.zeros(8, 8)
    collapsed[:, 0] = 100.0
    assert entropy_loss(collapsed, 1.0).item() == pytest.approx(0.0, abs=1e-4)


def test_soft_quantizer_trains_soft_and_evaluates_hard():
    torch.manual_seed(0)
    q = build_quantizer({"kind": "soft", "codebook_size": 8, "temperature": 1.0, "hard_forward": False}, 2)
    z = torch.randn(1, 2, 3, 3)
    hard = q.eval()(z)
    codes = q.codebook[hard.indices.reshape(-1)]
    assert torch.allclose(hard.quantized.permute(0, 2, 3, 1).reshape(-1, 2), codes, atol=1e-6)
    soft = q.train()(z)
    assert not torch.allclose(soft.quantized, hard.quantized)
    soft.quantized.pow(2).sum().backward()  # reconstruction-like loss only, no aux losses
    assert q.embedding.grad is not None and q.embedding.grad.abs().sum() > 0


def test_soft_hard_forward_decodes_the_hard_codes_with_soft_gradients():
    torch.manual_seed(0)
    q = build_quantizer({"kind": "soft", "codebook_size": 8, "temperature": 1.0}, 2)
    z = torch.randn(1, 2, 3, 3)
    hard = q.eval()(z)
    train = q.train()(z)
    assert torch.allclose(train.quantized, hard.quantized, atol=1e-6)  # training decodes what evaluation decodes
    train.quantized.pow(2).sum().backward()
    assert (q.embedding.grad.abs().sum(1) > 0).sum() > len(hard.indices.unique())  # unused codes learn too


def test_soft_assignment_is_not_uniform_at_initialisation():
    """Old behaviour: the temperature scaled raw squared distances to codes initialised in +-1/K, every code
    was equally far, the softmax uniform (max weight 1/K) and the decoder input a constant."""
    torch.manual_seed(0)
    q = build_quantizer({"kind": "soft", "codebook_size": 512, "temperature": 0.1}, 64).train()
    q.hard_forward = False  # the decoder sees the soft mixture
    z = torch.randn(4, 64, 8, 8)
    out = q(z)
    x = q.project(z)
    probs, _ = q.assignment(x, q.codebook)
    assert probs.max(1).values.mean() > 20 / 512
    spread = out.quantized.std(dim=(0, 2, 3)).mean() / out.quantized.abs().mean()
    assert spread > 0.3  # positions get different vectors


def test_rq_has_one_straight_through_on_the_sum():
    """Old behaviour: one straight-through per level multiplied the encoder's gradient by the depth."""
    for depth in (1, 2, 4):
        torch.manual_seed(0)
        q = build_quantizer({"kind": "rq", "codebook_size": 16, "depth": depth}, DIM).train()
        z = torch.randn(2, DIM, 4, 4, requires_grad=True)
        q(z).quantized.sum().backward()
        assert torch.allclose(z.grad, torch.ones_like(z)), depth


def test_bad_quantizer_config():
    with pytest.raises(UserInputError, match="unknown quantizer kind"):
        build_quantizer({"kind": "nope"}, DIM)
    with pytest.raises(UserInputError, match="no option"):
        build_quantizer({"kind": "fsq", "codebook_size": 4}, DIM)
    assert quantizer_options("fsq") == {"levels": [8, 5, 5, 5]}


def _ddp_worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        for kind in ("vq", "ema", "rq"):
            torch.manual_seed(0)  # same initial weights on every rank, as DDP guarantees
            cfg = {"kind": kind, "codebook_size": 8, "kmeans_init": True, "dead_code_threshold": 4.0, "decay": 0.5}
            q = build_quantizer(cfg, 2).train()
            torch.manual_seed(100 + rank)  # different data and RNG streams per rank
            for _ in range(3):
                q(torch.randn(1, 2, 4, 4) * (rank + 1))
            state = torch.cat([v.float().flatten() for v in q.state_dict().values()])
            gathered = [torch.zeros_like(state) for _ in range(world)]
            dist.all_gather(gathered, state)
            results[(kind, rank)] = all(torch.equal(gathered[0], g) for g in gathered)
    finally:
        dist.destroy_process_group()


def test_codebooks_stay_identical_across_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the workers
    results = ctx.Manager().dict()
    workers = [ctx.Process(target=_ddp_worker, args=(rank, 2, port, results)) for rank in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert all(w.exitcode == 0 for w in workers)
    assert dict(results) == {(k, r): True for k in ("vq", "ema", "rq") for r in (0, 1)}


def test_lfq_codebook_not_a_power_of_two_is_one_line_before_any_data_loads(phantom_root, tmp_path, capsys, monkeypatch):
    """Old behaviour: a ValueError traceback from LFQ's constructor inside build_model, after the data had loaded."""
    from prostate_vq.cli import main
    from prostate_vq.data import dataset

    assert main(["presets", "--show", "lfq", "--set", "quantizer.codebook_size=100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["prostate-vq presets: error: --set quantizer.codebook_size=100: codebook_size must be a power of two"]

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the config was checked")

    monkeypatch.setattr(dataset.SliceDataset, "__init__", no_data)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(phantom_root),
                "--out",
                str(out),
                "--preset",
                "lfq",
                "--set",
                "quantizer.codebook_size=100",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "quantizer.codebook_size" in err[0] and "power of two" in err[0]
    assert not (out / "best.pt").exists()


def test_option_limits_come_from_the_class():
    from prostate_vq.models.quantizers import check_options, option_rules

    assert option_rules("lfq")["codebook_size"]["power_of_two"]
    assert check_options("vq", {"codebook_size": 64.0}) == {"codebook_size": 64}
    with pytest.raises(UserInputError, match=r"quantizer.decay must be at most 1"):
        check_options("ema", {"decay": 1.5})
    with pytest.raises(UserInputError, match=r"quantizer.temperature must be above 0"):
        check_options("soft", {"temperature": 0})
    with pytest.raises(UserInputError, match="power of two"):
        build_quantizer({"kind": "lfq", "codebook_size": 48}, DIM)


def test_refit_capability_and_cosine_codes_are_public():
    assert {kind for kind, cls in QUANTIZERS.items() if cls.supports_refit} >= {"vq", "ema"}
    assert not QUANTIZERS["soft"].supports_refit and not QUANTIZERS["fsq"].supports_refit
    assert build_quantizer({"kind": "ema", "codebook_size": 8, "l2_normalize": True}, DIM).cosine_codes
    assert not build_quantizer({"kind": "vq", "codebook_size": 8}, DIM).cosine_codes
