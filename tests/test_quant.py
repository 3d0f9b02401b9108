import pytest
import torch

from shiftpq.levels import level_set
from shiftpq.quant import ActQuant, QConv2d, Quantizer


def _in_set(values: torch.Tensor, alpha: float, bits: int, signed: bool) -> bool:
    s = level_set(bits, signed)
    allowed = torch.tensor(s.values, dtype=torch.float64) * alpha
    if signed:
        allowed = torch.cat([-allowed, allowed])
    d = (values.double().flatten()[:, None] - allowed[None, :]).abs().min(1).values
    return bool((d < 1e-5 * max(1.0, alpha)).all())


def test_activation_quantizer_outputs_only_levels():
    torch.manual_seed(0)
    for bits in (2, 3, 4, 5, 8):
        q = ActQuant(bits)
        q.enabled = True
        q.alpha.data.fill_(2.5)
        y = q(torch.rand(4000) * 4)
        assert _in_set(y, 2.5, bits, False)
        assert float(y.detach().max()) == 2.5 and float(y.detach().min()) == 0.0


def test_weight_quantizer_outputs_only_levels():
    torch.manual_seed(0)
    for bits in (2, 3, 4, 5, 8):
        q = Quantizer(bits, signed=True, alpha=1.7)
        y = q.quantize(torch.randn(4000) * 2)
        assert _in_set(y, 1.7, bits, True)


def test_nearest_level_and_ties_round_up():
    q = ActQuant(4)
    q.alpha.data.fill_(48.0)  # levels become the integers 0,1,2,3,4,6,8,9,12,...
    x = torch.tensor([0.4, 0.5, 4.9, 5.0, 5.1, 10.5, 10.49, 40.0, 42.0, 47.9, 100.0])
    assert q.quantize(x).tolist() == [0, 1, 4, 6, 6, 12, 9, 36, 48, 48, 48]


def test_activation_alpha_gradient_formula():
    torch.manual_seed(1)
    q = ActQuant(4)
    q.alpha.data.fill_(1.3)
    x = (torch.rand(500) * 2).requires_grad_()
    g = torch.randn(500)
    (q.quantize(x) * g).sum().backward()
    xs = x.detach() / 1.3
    qx = q.quantize(x.detach()).detach() / 1.3
    expected = torch.where(xs > 1, torch.ones_like(xs), qx - xs)
    torch.testing.assert_close(q.alpha.grad, (g * expected).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, g * (xs <= 1).float())


def test_weight_alpha_gradient_formula():
    torch.manual_seed(2)
    q = Quantizer(4, signed=True, alpha=1.1)
    w = (torch.randn(500) * 1.5).requires_grad_()
    g = torch.randn(500)
    (q.quantize(w) * g).sum().backward()
    xs = w.detach() / 1.1
    qx = q.quantize(w.detach()).detach() / 1.1
    expected = torch.where(xs.abs() > 1, xs.sign(), qx - xs)
    torch.testing.assert_close(q.alpha.grad, (g * expected).sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, g)  # straight-through for weights


def test_codes_times_step_is_the_quantized_weight():
    torch.manual_seed(3)
    conv = QConv2d(8, 6, bits=4)
    conv.mask[[1, 4]] = 0
    conv.wq.enabled = True
    codes, step = conv.weight_codes()
    torch.testing.assert_close(codes.float() * step, conv.effective_weight().detach(), rtol=1e-5, atol=1e-6)
    assert set(codes.abs().unique().tolist()) <= set(level_set(4, True).ints)
    assert (codes[[1, 4]] == 0).all()


def test_pruned_filter_is_zero_after_quantization():
    conv = QConv2d(4, 4, bits=4)
    conv.mask[2] = 0
    conv.weight.data[2] = 1.0  # a masked filter contributes nothing, whatever its weights
    conv.wq.enabled = True
    assert (conv.effective_weight()[2] == 0).all()
    assert (conv.effective_weight()[[0, 1, 3]] != 0).any()


def test_fake_quant_ops_pass_opcheck_in_both_memory_formats():
    """The custom ops' fake kernels promise what the real ones return (shapes, dtypes, strides)."""
    from shiftpq.quant import fake_quant_backward_op, fake_quant_op
    for bits, signed in ((4, True), (4, False), (8, False)):
        q = Quantizer(bits, signed, 0.8)
        for channels_last in (False, True):
            x = torch.randn(2, 3, 4, 4)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            torch.library.opcheck(fake_quant_op, (x.clone().requires_grad_(True), q.alpha, q.vals, q.mids, signed, bits))
            torch.library.opcheck(fake_quant_backward_op, (torch.randn_like(x), x, q.alpha.detach(), q.vals, q.mids, signed,
                                                            bits))


def test_fake_quant_keeps_channels_last_without_copies():
    """A channels_last activation (what CUDA training runs) comes out channels_last, with the same
    values as its contiguous twin, and its gradient too: no layout copies around the quantizer,
    none for the next conv. PyTorch warns when bucketize must copy its input: it must not."""
    import warnings
    q = ActQuant(4)
    q.enabled = True
    x = (torch.randn(2, 5, 6, 6) * 4).relu()
    y0 = q(x.clone().requires_grad_(True))
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = q(xc)
        y.backward(torch.ones_like(y))
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, y0)


def test_compiled_graph_keeps_the_quantizer_opaque():
    """With the "ops" compiled quantizer, torch.compile must call our fake-quant kernels, not lower them: Inductor's own CUDA lowering
    of bucketize trained nothing (docs/experiments.md, round 6). The graphs AOTAutograd hands to the
    compiler hold the shiftpq ops and no bucketize, forward and backward."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen = []

    def grab(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return make_boxed_func(gm.forward)

    from shiftpq.quant import set_compiled_quantizer
    conv = QConv2d(3, 4, bits=4)
    act = ActQuant(4)
    conv.wq.enabled = act.enabled = True
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), act)
    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=grab, bw_compiler=grab))
    x = torch.randn(2, 3, 6, 6)
    set_compiled_quantizer("ops")
    try:
        compiled(x).sum().backward()
    finally:
        set_compiled_quantizer("fused")
        torch._dynamo.reset()
    assert len(seen) == 2
    fw, bw = seen
    assert "shiftpq.fake_quant.default" in fw and "shiftpq.fake_quant_backward.default" in bw
    assert not any("bucketize" in t for t in fw | bw)
    # and the compiled module computes what the eager one does
    assert torch.equal(torch.compile(model, backend="aot_eager")(x), model(x))


def test_eager_and_compiled_quantizers_agree():
    """The eager autograd.Function and the custom ops (what torch.compile calls) are two wrappers of
    one computation: outputs and gradients (input and alpha) equal, both signs, both formats."""
    from shiftpq.quant import _FakeQuant, fake_quant_op
    torch.manual_seed(0)
    for bits, signed in ((4, True), (4, False), (8, False), (8, True)):
        q = Quantizer(bits, signed, 0.8)
        for channels_last in (False, True):
            x = torch.randn(2, 3, 5, 5) * 0.7
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            g = torch.randn_like(x)
            outs = []
            for f in (lambda *a: _FakeQuant.apply(*a, q.consts), lambda *a: fake_quant_op(*a, bits)):
                xi = x.clone().requires_grad_(True)
                q.alpha.grad = None
                y = f(xi, q.alpha, q.vals, q.mids, signed)
                y.backward(g)
                outs.append((y.detach(), xi.grad, q.alpha.grad.clone()))
            for a, b in zip(*outs):
                assert torch.equal(a, b)


def test_inductor_diagnostic_runs_and_agrees_on_the_cpu():
    """bench/inductor_quant.py (the CUDA miscompile hunt) works, and on the CPU every compiled piece
    of the quantizer equals eager, element for element."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "inductor_quant.py"
    spec = importlib.util.spec_from_file_location("inductor_quant", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.compare("cpu", (2, 3, 4, 5), dtypes=(torch.float32,))
    assert {(r["quantizer"], r["piece"]) for r in rows} == {(q, p) for q in ("activation", "weight")
                                                            for p in ("index", "levels", "forward", "grads",
                                                                      "fused_forward", "fused_grads")}
    assert all(r["mismatches"] == 0 for r in rows)
    assert all(r["alpha_grad_rel_diff"] < 1e-5 for r in rows if r["piece"].endswith("grads"))
    torch._dynamo.reset()


# -- the fused quantizer (what torch.compile traces by default) ------------------------------------
# Level sets by (bits, signed): APoT 2-5 bits both ways and the 8-bit uniform sets.
FUSED_SETS = ((2, True), (3, False), (4, True), (4, False), (5, True), (5, False), (8, True), (8, False))


def _probe(bits: int, signed: bool, alpha: float, shape=(4, 4, 9, 9)) -> torch.Tensor:
    from shiftpq.quant import level_probes
    return level_probes(bits, signed, alpha, shape)


def _grads(fn, x, alpha, g):
    xi = x.clone().requires_grad_(True)
    a = alpha.clone().requires_grad_(True)
    y = fn(xi, a)
    y.backward(g)
    return y.detach(), xi.grad, a.grad


def test_fused_constants_reproduce_every_level_table():
    """The fused quantizer's baked constants are the level table's float32 values, and the uniform
    path's arithmetic (checked inside fused_consts) holds for every set we can build."""
    from shiftpq.levels import ACT_BITS, WEIGHT_BITS, level_set
    from shiftpq.quant import fused_consts
    for signed, widths in ((True, WEIGHT_BITS), (False, ACT_BITS)):
        for bits in widths:
            lv = level_set(bits, signed)
            width, n, mids, vals = fused_consts(lv)
            assert width == bits
            assert torch.equal(torch.tensor(vals), torch.tensor(lv.values, dtype=torch.float32))
            assert torch.equal(torch.tensor(mids), torch.tensor(lv.midpoints, dtype=torch.float32))
            assert (n != 0) == (lv.kind == "uniform")


def test_fused_quantizer_equals_the_custom_op_eager():
    """Element for element: forward, input gradient and alpha gradient of the fused quantizer equal
    the custom op's (bucketize + table), every level set, float32 and bf16, both memory formats."""
    from shiftpq.quant import _FusedFakeQuant, fake_quant_op
    torch.manual_seed(4)
    for bits, signed in FUSED_SETS:
        q = Quantizer(bits, signed, 0.5)
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                x = _probe(bits, signed, 0.5).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                g = torch.randn(x.shape).to(dtype)
                want = _grads(lambda xi, a: fake_quant_op(xi, a, q.vals, q.mids, signed, bits), x, q.alpha.detach(), g)
                got = _grads(lambda xi, a: _FusedFakeQuant.apply(xi, a, q.consts, signed), x, q.alpha.detach(), g)
                for name, w, c in zip(("forward", "input grad", "alpha grad"), want, got):
                    assert w.dtype == c.dtype and torch.equal(w, c), (bits, signed, dtype, channels_last, name)
                assert got[0].stride() == x.stride()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_quantizer_compiled_equals_the_custom_op(dtype):
    """torch.compile (Inductor, one graph for several quantizers, weights and activations) computes
    the fused quantizer's forward and input gradients exactly as the eager custom op does; the alpha
    gradient, a sum, up to summation order. The traced graphs hold neither bucketize, nor a gather
    or index, nor our custom ops."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from shiftpq.quant import fake_quant, fake_quant_op

    torch.manual_seed(5)
    qs = [Quantizer(bits, signed, 0.5) for bits, signed in FUSED_SETS]
    xs = [_probe(b, s, 0.5).to(dtype).contiguous(memory_format=torch.channels_last) for b, s in FUSED_SETS]
    gs = [torch.randn(x.shape).to(dtype) for x in xs]

    def many(*args):
        n = len(qs)
        return [fake_quant(x, a, q.vals, q.mids, q.levels.signed, q.consts)
                for q, x, a in zip(qs, args[:n], args[n:])]

    seen = []

    def grab(gm, example_inputs):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return make_boxed_func(gm.forward)

    def run(fn):
        ins = [x.clone().requires_grad_(True) for x in xs] + [q.alpha.detach().clone().requires_grad_(True) for q in qs]
        ys = fn(*ins)
        torch.autograd.backward(ys, gs)
        return [y.detach() for y in ys], [t.grad for t in ins]

    torch._dynamo.reset()
    try:
        want_y, want_g = run(lambda *a: [fake_quant_op(x, al, q.vals, q.mids, q.levels.signed, q.bits)
                                         for q, x, al in zip(qs, a[:len(qs)], a[len(qs):])])
        got_y, got_g = run(torch.compile(many, fullgraph=True))
        torch._dynamo.reset()
        run(torch.compile(many, fullgraph=True, backend=aot_autograd(fw_compiler=grab, bw_compiler=grab)))
    finally:
        torch._dynamo.reset()
    for (bits, signed), w, c in zip(FUSED_SETS, want_y, got_y):
        assert torch.equal(w, c), ("forward", bits, signed)
    for i, (w, c) in enumerate(zip(want_g, got_g)):
        bits, signed = FUSED_SETS[i % len(qs)]
        if i < len(qs):
            assert torch.equal(w, c), ("input grad", bits, signed)
        else:
            torch.testing.assert_close(c, w, rtol=1e-5, atol=1e-6, msg=f"alpha grad {bits} {signed}")
    assert len(seen) == 2
    ops = seen[0] | seen[1]
    assert not [t for t in ops if "bucketize" in t or "gather" in t or "index" in t or "shiftpq" in t], ops


# -- the "inductor" quantizer kernels (shiftpq train --quant-kernels inductor) ----------------------
# Variants kept few: each (level set, dtype, layout) is one Inductor compilation on the CPU.
KERNEL_CASES = (((4, False), torch.float32, "channels_last"), ((4, False), torch.bfloat16, "channels_last"),
                ((4, True), torch.float32, "contiguous"), ((8, False), torch.bfloat16, "2d"),
                ((8, True), torch.float32, "2d"))


def test_inductor_kernels_equal_the_table():
    """The compiled fused pieces compute, through the eager autograd.Function and through the custom
    ops, what the table kernels do: forward and input gradient element for element (midpoints, the
    floats beside them, levels; a power-of-two alpha and one that is not), the alpha gradient up to
    summation order, in the input's layout."""
    from shiftpq.quant import _FakeQuant, fake_quant_op, set_quant_kernels
    torch.manual_seed(6)
    try:
        for (bits, signed), dtype, layout in KERNEL_CASES:
            for alpha in (0.5, 0.8):
                q = Quantizer(bits, signed, alpha)
                x = _probe(bits, signed, alpha).to(dtype)
                x = (x.contiguous(memory_format=torch.channels_last) if layout == "channels_last"
                     else x.reshape(x.shape[0], -1) if layout == "2d" else x)
                g = torch.randn(x.shape).to(dtype)
                for f in (lambda xi, a: _FakeQuant.apply(xi, a, q.vals, q.mids, signed, q.consts),
                          lambda xi, a: fake_quant_op(xi, a, q.vals, q.mids, signed, bits)):
                    set_quant_kernels("table")
                    want = _grads(f, x, q.alpha.detach(), g)
                    set_quant_kernels("inductor")
                    got = _grads(f, x, q.alpha.detach(), g)
                    case = (bits, signed, dtype, layout, alpha)
                    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), case
                    assert got[0].stride() == x.stride() and got[1].stride() == x.stride(), case
                    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-6, msg=str(case))
    finally:
        set_quant_kernels("table")


def test_inductor_kernels_train_step_equals_the_table():
    """A whole QAT step of a pruned ResNet-20 (eager) with the inductor kernels: the same logits and the
    same gradient of every weight and BatchNorm parameter, bit for bit; the clipping thresholds'
    gradients (sums) up to summation order."""
    from shiftpq.models import build_model, model_input
    from shiftpq.pruning import gm_prune, layer_rates
    from shiftpq.quant import calibrate_quantizers, set_quant_kernels
    torch.manual_seed(0)
    model = build_model("resnet20")
    gm_prune(model, layer_rates(model, 0.3), incremental=True)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(4)
    calibrate_quantizers(model, images)
    model.set_quant(True)
    runs = []
    try:
        for kind in ("table", "inductor"):
            set_quant_kernels(kind)
            model.zero_grad(set_to_none=True)
            out = model(model_input(images))
            torch.nn.functional.cross_entropy(out, labels).backward()
            runs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    finally:
        set_quant_kernels("table")
    (out_t, grad_t), (out_i, grad_i) = runs
    assert torch.equal(out_t, out_i)
    assert grad_t.keys() == grad_i.keys() and any(n.endswith("alpha") for n in grad_t)
    for n in grad_t:
        if n.endswith("alpha"):
            torch.testing.assert_close(grad_i[n], grad_t[n], rtol=1e-4, atol=1e-7, msg=n)
        else:
            assert torch.equal(grad_t[n], grad_i[n]), n


def test_quant_kernels_choice_is_checked(monkeypatch):
    from shiftpq.quant import set_quant_kernels
    with pytest.raises(ValueError, match="must be one of"):
        set_quant_kernels("triton")


def test_kernel_mismatch_check_passes_and_survives_cuda_style_division():
    """quant.inductor_kernel_mismatches (the GPU round's gate) finds no difference on the CPU, also when
    Inductor lowers a division by a constant as on CUDA (a multiplication by the reciprocal, which
    float32 does not compute exactly: the uniform path divides in float64 for that reason; with
    float32 division 46 of 637 probes of the 8-bit signed set came out wrong)."""
    import torch._inductor.lowering as L
    from shiftpq.quant import _inductor_kernels, inductor_kernel_mismatches
    sets = [(8, True), (8, False), (4, False)]
    assert not any(inductor_kernel_mismatches("cpu", sets, dtypes=(torch.float32,)).values())
    if not all(hasattr(L, n) for n in ("div_prim", "get_constant_value", "mul")):
        pytest.skip("this PyTorch's Inductor has no div_prim lowering to patch")
    orig = L.div_prim

    def cuda_like(a, b):
        d = L.get_constant_value(b)
        return L.mul(a, 1.0 / d.value) if d is not None else orig(a, b)

    L.div_prim = cuda_like
    try:
        torch._dynamo.reset()
        _inductor_kernels.cache_clear()
        with torch._inductor.config.patch(force_disable_caches=True):  # else the on-disk cache serves the old code
            assert not any(inductor_kernel_mismatches("cpu", sets[:1], dtypes=(torch.float32,)).values())
    finally:
        L.div_prim = orig
        torch._dynamo.reset()
        _inductor_kernels.cache_clear()
