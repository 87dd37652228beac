"""OBProx-SG against an independent float64 reference written here from the update rules (Chen et al.)."""

from __future__ import annotations

import io
import math

import pytest
import torch

import compresskit as ck
from compresskit.sparsify import obproxsg as obx

# ---------------------------------------------------------------------------------------------------
# the reference: element by element, in Python floats (float64), straight from the paper's rules


def ref_prox(x: float, g: float, lr: float, lam: float) -> float:
    y = x - lr * g
    t = lr * lam
    return math.copysign(abs(y) - t, y) if abs(y) > t else 0.0


def ref_orthant(x: float, g: float, lr: float, lam: float, eps: float) -> float:
    zeta = (x > 0) - (x < 0)
    if zeta == 0:
        return 0.0
    x_hat = x - lr * (g + lam * zeta)
    return x_hat if x_hat * zeta > eps else 0.0


def ref_phase(step: int, n_prox: int | None, n_orth: int | None) -> str:
    if n_prox is None:
        return "prox"
    if n_orth is None:
        return "prox" if step < n_prox else "orthant"
    return "prox" if step % (n_prox + n_orth) < n_prox else "orthant"


def ref_step(values: list[float], grads: list[float], phase: str, lr: float, lambda_: float, eps: float):
    lam = lambda_
    if phase == "prox":
        return [ref_prox(x, g, lr, lam) for x, g in zip(values, grads)]
    return [ref_orthant(x, g, lr, lam, eps) for x, g in zip(values, grads)]


def _params(gen: torch.Generator, shapes, dtype=torch.float64):
    out = []
    for s in shapes:
        t = torch.randn(s, generator=gen, dtype=torch.float64) * 0.5
        t[torch.rand(s, generator=gen, dtype=torch.float64) < 0.2] = 0.0  # some exact zeros to start
        out.append(torch.nn.Parameter(t.to(dtype)))
    return out


def test_matches_float64_reference_with_groups_and_cycle(monkeypatch):
    monkeypatch.setattr(obx, "_CPU_CHUNK", 37)  # the CPU path works slice by slice: cross many boundaries
    gen = torch.Generator().manual_seed(0)
    a = _params(gen, [(6, 3, 3, 3), (6,)])
    b = _params(gen, [(4, 6), (4,)])
    hyper = [dict(lr=0.05, lambda_=0.8, eps=0.0), dict(lr=0.2, lambda_=0.3, eps=0.02)]
    groups = [{"params": a, **hyper[0]}, {"params": b, **hyper[1]}]
    opt = ck.OBProxSG(groups, lr=1.0, lambda_=1.0, n_prox_steps=2, n_orthant_steps=3)
    ref = [[p.detach().flatten().tolist() for p in ps] for ps in (a, b)]
    for step in range(12):
        phase = ref_phase(step, 2, 3)
        assert opt.phase == phase
        for gi, ps in enumerate((a, b)):
            for pi, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.grad = g
                ref[gi][pi] = ref_step(ref[gi][pi], g.flatten().tolist(), phase, **hyper[gi])
        opt.step()
        for gi, ps in enumerate((a, b)):
            for pi, p in enumerate(ps):
                want = torch.tensor(ref[gi][pi], dtype=torch.float64).view(p.shape)
                assert torch.equal(p.detach() == 0, want == 0), f"zero pattern differs at step {step}"
                torch.testing.assert_close(p.detach(), want, rtol=1e-13, atol=1e-15)
    assert opt.num_steps == 12
    # both phases actually made zeros and the orthant eps rule was exercised
    assert sum(int((p == 0).sum()) for p in a + b) > 0


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_other_kernels_compute_the_same_rules(kernel):
    """The torch.compile kernels and the multi-tensor (CUDA) kernels are plain functions: run them
    eagerly on CPU against the reference."""
    gen = torch.Generator().manual_seed(1)
    xs = [p.detach() for p in _params(gen, [(50,), (3, 4, 5)])]
    gs = [torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in xs]
    lr, lam, eps = 0.1, 0.7, 0.01
    sc = [[torch.tensor(v, dtype=torch.float64)] * 2 for v in (lr, lam, eps)]
    for phase in ("prox", "orthant"):
        ys = [x.clone() for x in xs]
        want = [
            ref_step(x.flatten().tolist(), g.flatten().tolist(), phase, lr, lam, eps) for x, g in zip(xs, gs)
        ]
        if kernel == "fused":
            if phase == "prox":
                obx._prox_fused(ys, gs, sc[0], sc[1])
            else:
                obx._orthant_fused(ys, gs, *sc)
        elif phase == "prox":
            obx._prox_eager(ys, gs, lr, lam)
        else:
            obx._orthant_eager(ys, gs, lr, lam, eps)
        for y, w in zip(ys, want):
            w = torch.tensor(w, dtype=torch.float64).view(y.shape)
            assert torch.equal(y == 0, w == 0)
            torch.testing.assert_close(y, w, rtol=1e-13, atol=1e-15)


def test_nan_gradient_is_not_hidden():
    x = torch.nn.Parameter(torch.tensor([0.5, -0.5, 0.0]))
    opt = ck.OBProxSG([x], lr=0.1, lambda_=0.1, n_prox_steps=0)  # orthant steps
    x.grad = torch.tensor([float("nan"), 1.0, 0.0])
    opt.step()
    assert math.isnan(x[0].item()) and x[1].item() == pytest.approx(-0.5 - 0.1 * (1.0 - 0.1))
    assert x[2].item() == 0.0


def test_lasso_reaches_the_proximal_gradient_solution():
    """min 1/(2n)‖Ax − b‖² + λ‖x‖₁: full-batch OBProx-SG ends at the long ISTA solve's minimiser."""
    gen = torch.Generator().manual_seed(2)
    n, d, lam = 80, 25, 0.1
    A = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x_true = torch.zeros(d, dtype=torch.float64)
    x_true[:5] = torch.tensor([2.0, -1.5, 1.0, -0.7, 0.5], dtype=torch.float64)
    b = A @ x_true + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    step = 1.0 / float(torch.linalg.matrix_norm(A, ord=2) ** 2 / n)  # 1/L

    # the reference: ISTA written out, many iterations
    x_ref = torch.zeros(d, dtype=torch.float64)
    for _ in range(4000):
        y = x_ref - step * (A.T @ (A @ x_ref - b) / n)
        x_ref = torch.sign(y) * torch.clamp(y.abs() - step * lam, min=0)
    # optimality of the reference: 0 ∈ ∇f + λ∂‖x‖₁
    grad = A.T @ (A @ x_ref - b) / n
    on = x_ref != 0
    assert torch.allclose(grad[on], -lam * torch.sign(x_ref[on]), atol=1e-10)
    assert bool((grad[~on].abs() <= lam + 1e-10).all())
    assert 0 < int(on.sum()) < d

    x = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))
    opt = ck.OBProxSG([x], lr=step, lambda_=lam, n_prox_steps=300, n_orthant_steps=None)
    for _ in range(1500):
        opt.zero_grad()
        loss = 0.5 * ((A @ x - b) ** 2).mean()
        loss.backward()
        opt.step()
    assert opt.phase == "orthant"
    assert torch.equal(x.detach() != 0, on)
    torch.testing.assert_close(x.detach(), x_ref, rtol=0, atol=1e-8)


def _train(model, opt, sched, data, steps):
    for i in range(steps):
        xb, yb = data[i % len(data)]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
        sched.step()


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = ck.OBProxSG(
        obx.l1_param_groups(model, 0.05, include_biases=False), lr=0.1, lambda_=0.05, eps=1e-3,
        n_prox_steps=3, n_orthant_steps=2,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    return model, opt, sched


def test_resume_equals_uninterrupted():
    gen = torch.Generator().manual_seed(3)
    data = [(torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen)) for _ in range(5)]
    model, opt, sched = _setup()
    _train(model, opt, sched, data, 11)

    model2, opt2, sched2 = _setup()
    _train(model2, opt2, sched2, data, 4)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)

    model3, opt3, sched3 = _setup(seed=99)  # different init: everything must come from the checkpoint
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    assert opt3.num_steps == 4 and opt3.phase == ref_phase(4, 3, 2) == "orthant"
    for i in range(4, 11):  # continue where the data stream stopped
        xb, yb = data[i % len(data)]
        opt3.zero_grad()
        torch.nn.functional.mse_loss(model3(xb), yb).backward()
        opt3.step()
        sched3.step()
    for p, q in zip(model.parameters(), model3.parameters()):
        assert torch.equal(p, q)
    assert opt3.num_steps == opt.num_steps and opt3.phase == opt.phase
    assert any(int((p == 0).sum()) > 0 for p in model.parameters())


def test_deepcopy_keeps_phase_counter():
    import copy

    _, opt, _ = _setup()
    opt.num_steps = 7
    assert copy.deepcopy(opt).num_steps == 7


def test_scheduler_lr_is_read_every_step():
    """λ = 0 in a prox step is plain SGD with the scheduled lr: x ← x − lr_t·g."""
    x = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = ck.OBProxSG([x], lr=0.5, lambda_=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    want = x.detach().clone()
    g = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    for t in range(4):
        x.grad = g.clone()
        opt.step()
        want = want - (0.5 / (t + 1)) * g
        sched.step()
        torch.testing.assert_close(x.detach(), want, rtol=1e-14, atol=0)


def test_phase_schedules():
    def phases(n_prox, n_orth, n=8):
        opt = ck.OBProxSG([torch.nn.Parameter(torch.zeros(1))], lr=1, lambda_=0, n_prox_steps=n_prox,
                          n_orthant_steps=n_orth)
        out = []
        for _ in range(n):
            out.append(opt.phase[0])
            opt.step()
        return "".join(out)

    assert phases(None, None) == "pppppppp"
    assert phases(3, None) == "pppooooo"
    assert phases(0, None) == "oooooooo"
    assert phases(2, 1) == "ppoppopp"


def test_steps_from_epochs():
    assert ck.steps_from_epochs(2, 100) == {"n_prox_steps": 200, "n_orthant_steps": None}
    assert ck.steps_from_epochs(10, 125, 5) == {"n_prox_steps": 1250, "n_orthant_steps": 625}
    assert ck.steps_from_epochs(0.5, 10) == {"n_prox_steps": 5, "n_orthant_steps": None}
    assert ck.steps_from_epochs(None, 10) == {"n_prox_steps": None, "n_orthant_steps": None}
    opt = ck.OBProxSG([torch.nn.Parameter(torch.ones(1))], 1e-3, 1e-4, **ck.steps_from_epochs(2, 3))
    assert opt.n_prox_steps == 6 and opt.n_orthant_steps is None
    with pytest.raises(ValueError, match="steps_per_epoch"):
        ck.steps_from_epochs(2, 0)
    with pytest.raises(ValueError, match="n_prox_epochs"):
        ck.steps_from_epochs(-1, 10)
    with pytest.raises(ValueError, match="n_orthant_epochs"):
        ck.steps_from_epochs(1, 10, 0.01)
    with pytest.raises(ValueError, match="needs n_prox_epochs"):
        ck.steps_from_epochs(None, 10, 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_math_in_float32(dtype, monkeypatch):
    monkeypatch.setattr(obx, "_CPU_CHUNK", 64)  # several slices through the float32 scratch rows
    gen = torch.Generator().manual_seed(4)
    (x,) = _params(gen, [(400,)], dtype=dtype)
    (y,) = _params(gen, [(100,)], dtype=torch.float32)  # float32 beside it: shares the float32 scratch
    lr, lam, eps = 0.05, 0.5, 0.005
    opt = ck.OBProxSG([x, y], lr=lr, lambda_=lam, eps=eps, n_prox_steps=1, n_orthant_steps=None)
    for phase in ("prox", "orthant"):
        g = torch.randn(400, generator=gen).to(dtype)
        before = x.detach().double().tolist()
        want = torch.tensor(ref_step(before, g.double().tolist(), phase, lr, lam, eps))
        x.grad = g
        y.grad = torch.randn(100, generator=gen)
        want_y = torch.tensor(ref_step(y.detach().tolist(), y.grad.tolist(), phase, lr, lam, eps))
        opt.step()
        torch.testing.assert_close(y.detach(), want_y, rtol=1e-6, atol=1e-7)
        assert x.dtype == dtype and x.grad.dtype == dtype
        got = x.detach().double()
        # the float32 result rounded once to the storage type; the float64 reference rounded once too
        torch.testing.assert_close(got, want.to(dtype).double(), rtol=2 ** -7, atol=1e-3)
        assert float(((got == 0) != (want.to(dtype) == 0)).double().mean()) < 0.01


def test_none_and_sparse_grads():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = ck.OBProxSG([*emb.parameters(), frozen], lr=0.1, lambda_=0.5)
    dense = torch.nn.Parameter(emb.weight.detach().clone())
    before = emb.weight.detach().clone()
    idx = torch.tensor([1, 3, 3])
    emb(idx).sum().backward()
    assert emb.weight.grad.is_sparse and frozen.grad is None
    opt.step()
    torch.nn.functional.embedding(idx, dense).sum().backward()
    pairs = zip(before.flatten().tolist(), dense.grad.flatten().tolist())
    want = [ref_prox(x, g, 0.1, 0.5) for x, g in pairs]
    torch.testing.assert_close(emb.weight.detach().flatten(), torch.tensor(want), rtol=1e-6, atol=1e-7)
    assert torch.equal(frozen.detach(), torch.ones(3))


def test_l1_param_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    groups = obx.l1_param_groups(model, 1e-4, include_biases=False, include_norms=False)
    assert [g["lambda_"] for g in groups] == [1e-4, 0.0]
    assert {id(p) for p in groups[0]["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(groups[1]["params"]) == 4
    assert len(obx.l1_param_groups(model, 1e-4)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lr=0.0, lambda_=1e-4), "lr must be > 0"),
        (dict(lr=-1e-3, lambda_=1e-4), "lr must be > 0"),
        (dict(lr=float("nan"), lambda_=1e-4), "lr must be finite"),
        (dict(lr=1e-3, lambda_=-1e-4), "lambda_ must be >= 0"),
        (dict(lr=1e-3, lambda_=1e-4, eps=-1.0), "eps must be >= 0"),
        (dict(lr=1e-3, lambda_=1e-4, n_prox_steps=-1), "n_prox_steps"),
        (dict(lr=1e-3, lambda_=1e-4, n_prox_steps=2, n_orthant_steps=0), "n_orthant_steps"),
        (dict(lr=1e-3, lambda_=1e-4, n_orthant_steps=3), "needs n_prox_steps"),
        (dict(lr="big", lambda_=1e-4), "lr must be a real number"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ck.OBProxSG([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_bad_group_and_state():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=r"lambda_ must be >= 0.*param group 1"):
        ck.OBProxSG([{"params": [p]}, {"params": [torch.nn.Parameter(torch.ones(1))], "lambda_": -1}],
                    lr=1e-3, lambda_=1e-4)
    opt = ck.OBProxSG([p], lr=1e-3, lambda_=1e-4)
    with pytest.raises(ValueError, match="obproxsg"):
        opt.load_state_dict(torch.optim.SGD([p], lr=0.1).state_dict())
    opt.param_groups[0]["lr"] = -0.5  # e.g. a broken scheduler
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.step()


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(name):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(obx, "_compiled", broken)
    gen = torch.Generator().manual_seed(5)
    (x,) = _params(gen, [(30,)])
    g = torch.randn(30, generator=gen, dtype=torch.float64)
    want = torch.tensor(ref_step(x.detach().tolist(), g.tolist(), "prox", 0.1, 0.5, 0.0), dtype=torch.float64)
    opt = ck.OBProxSG([x], lr=0.1, lambda_=0.5, compile=True)
    x.grad = g
    with pytest.warns(UserWarning, match="torch.compile failed.*no compiler here"):
        opt.step()
    assert opt.compile is False
    torch.testing.assert_close(x.detach(), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("threshold, expect_compiled", [(31, False), (30, True)])
def test_auto_compile_decides_on_the_first_steps_size(monkeypatch, threshold, expect_compiled):
    """compile="auto" (the default) compiles only when the first step updates >= AUTO_COMPILE_NUMEL
    elements; the decision is kept for later steps and the update is the reference one either way."""
    calls = []

    def fake_compiled(name):  # the eager multi-tensor kernels stand in for the compiled ones
        calls.append(name)
        return lambda xs, gs, lrs, lams, *eps: (obx._prox_eager(xs, gs, float(lrs[0]), float(lams[0]))
                                                if name == "prox" else
                                                obx._orthant_eager(xs, gs, float(lrs[0]), float(lams[0]),
                                                                   float(eps[0][0])))

    monkeypatch.setattr(obx, "_compiled", fake_compiled)
    monkeypatch.setattr(obx, "AUTO_COMPILE_NUMEL", threshold)
    gen = torch.Generator().manual_seed(6)
    (x,) = _params(gen, [(30,)])
    opt = ck.OBProxSG([x], lr=0.1, lambda_=0.5)
    assert opt.compile == "auto"
    for _ in range(2):
        g = torch.randn(30, generator=gen, dtype=torch.float64)
        want = ref_step(x.detach().tolist(), g.tolist(), "prox", 0.1, 0.5, 0.0)
        x.grad = g
        opt.step()
        want = torch.tensor(want, dtype=torch.float64)
        torch.testing.assert_close(x.detach(), want, rtol=1e-13, atol=1e-15)
    assert opt.compile is expect_compiled
    assert calls == (["prox", "prox"] if expect_compiled else [])


@pytest.mark.slow
def test_compiled_step_matches_eager_without_recompiling():
    """compile=True really compiles (both phases), agrees with eager, and a scheduler changing lr does not
    trigger recompilation (lr, λ, eps enter as 0-d tensors)."""
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(6)
    a = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(8, 3, 3, 3), (8,), (5, 8)]]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    kw = dict(lr=0.1, lambda_=0.5, eps=0.01, n_prox_steps=2, n_orthant_steps=2)
    opt_a, opt_b = ck.OBProxSG(a, compile=True, **kw), ck.OBProxSG(b, **kw)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, 1, 0.7)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 1, 0.7)
    counters.clear()
    for _ in range(6):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        opt_a.step(), opt_b.step(), sched_a.step(), sched_b.step()
    assert opt_a.compile, "compilation fell back to eager"
    assert counters["stats"]["unique_graphs"] == 2 and not counters["recompiles"]
    for p, q in zip(a, b):
        assert torch.equal(p == 0, q == 0)
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert sum(int((p == 0).sum()) for p in a) > 0


def test_bad_added_group_is_not_kept():
    opt = ck.OBProxSG([torch.nn.Parameter(torch.ones(2))], lr=1e-3, lambda_=1e-4)
    with pytest.raises(ValueError, match=r"eps must be >= 0 \(param group 1\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "eps": -1.0})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lambda_": 0})
    assert opt.param_groups[1]["lambda_"] == 0.0 and opt.param_groups[1]["lr"] == 1e-3
