import torch

from shiftpq.metrics import model_metrics, nonzero_channels
from shiftpq.models import build_model
from shiftpq.pruning import gm_prune, gm_scores, gm_select, layer_rates, stream_groups, zero_pruned
from shiftpq.train import RECIPES, _optimizer


def test_gm_score_is_sum_of_distances():
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert gm_scores(w).tolist() == [5 + 10, 5 + 5, 10 + 5]


def test_gm_prunes_near_duplicate_filters_not_the_outliers():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * 3
    center = w.mean(0)
    w[2] = center + 0.01 * torch.randn_like(center)  # these two sit at the geometric median
    w[5] = center + 0.01 * torch.randn_like(center)
    assert gm_select(w, 2) == [2, 5]


def test_gm_select_among_candidates_only():
    w = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert gm_select(w, 1) == [1]
    assert gm_select(w, 1, candidates=[0, 2, 3]) == [2]


def test_pruned_count_per_layer_at_rate_0_3():
    m = build_model("resnet20")
    pruned = gm_prune(m, layer_rates(m, 0.3), incremental=False, grouped=False)
    assert len(pruned["stem"]) == 4 and len(pruned["layer2.0.conv1"]) == 9 and len(pruned["layer3.2.conv2"]) == 19


def test_incremental_pruning_keeps_earlier_choices():
    m = build_model("resnet20")
    rates = layer_rates(m, 0.3)
    first = gm_prune(m, {n: r / 3 for n, r in rates.items()}, incremental=True)
    with torch.no_grad():
        for cb in m.prunable().values():
            cb.conv.weight.add_(torch.randn_like(cb.conv.weight))
    second = gm_prune(m, rates, incremental=True)
    for n in first:
        assert set(first[n]) <= set(second[n])
        assert len(second[n]) == int(m.prunable()[n].conv.weight.shape[0] * 0.3)


def test_grouped_pruning_removes_channels_from_the_residual_stream():
    m = build_model("resnet20")
    groups = stream_groups(m)
    assert [len(g.members) for g in groups] == [4, 3, 3]  # stem + 3 blocks; 3 blocks; 3 blocks
    pruned = gm_prune(m, layer_rates(m, 0.3), incremental=False, grouped=True)
    for g in groups:
        assert len({tuple(pruned[n]) for n in g.members}) == 1
    nz = nonzero_channels(m)
    for stage, width in ((1, 16), (2, 32), (3, 64)):
        stream = nz[f"layer{stage}.2.act"]
        assert len(stream) == width - int(width * 0.3)
        assert stream == [i for i in range(width) if i not in pruned[f"layer{stage}.0.conv2"]]
    m.set_quant(False)
    # the physically zero channels really are zero in the forward pass
    acts = {}
    hooks = [m.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o))
             for n in ("layer1.2.act", "layer2.2.act", "layer3.2.act")]
    m.eval()(torch.randn(4, 3, 32, 32))
    for h in hooks:
        h.remove()
    for n, out in acts.items():
        dead = [c for c in range(out.shape[1]) if c not in nz[n]]
        assert dead and (out[:, dead] == 0).all()


def test_grouped_metrics_match_the_paper_for_resnet20():
    m = build_model("resnet20")
    gm_prune(m, layer_rates(m, 0.3), incremental=False, grouped=True)
    r = model_metrics(m)["ratios"]
    assert round(r["size"], 2) == 15.78  # paper Table II: 15.78x
    assert 115 < r["bops"] < 116.5  # paper: 115.85x (it counts 1x1 option-B shortcut MACs)


def test_hard_masks_hold_through_sgd_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    m = build_model("tiny")
    gm_prune(m, layer_rates(m, 0.5), incremental=True)
    opt = _optimizer(m, RECIPES["paper"], qat=False)
    for quant in (False, True):
        m.set_quant(quant)
        for _ in range(3):
            loss = m(torch.randn(8, 3, 32, 32)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            zero_pruned(m, opt)
        for cb in m.prunable().values():
            dead = cb.conv.mask == 0
            assert dead.any()
            assert (cb.conv.weight[dead] == 0).all() and (cb.bn.weight[dead] == 0).all() and (cb.bn.bias[dead] == 0).all()
            assert (opt.state[cb.conv.weight]["momentum_buffer"][dead] == 0).all()
            assert (cb.conv.weight[~dead] != 0).any()


def test_spq_selection_is_redone_and_pruned_filters_can_return():
    torch.manual_seed(0)
    m = build_model("tiny")
    cb = m.prunable()["layer3.0.conv1"]
    first = gm_prune(m, layer_rates(m, 0.5), incremental=False)["layer3.0.conv1"]
    kept_weights = cb.conv.weight.detach().clone()
    x = torch.randn(2, 8, 16, 16)
    assert (cb(x)[:, first] == 0).all()  # the forward pass ignores pruned filters...
    assert torch.equal(cb.conv.weight, kept_weights)  # ...which keep their weights
    with torch.no_grad():  # training moves a kept filter onto the geometric median
        others = [i for i in range(16) if i not in first]
        cb.conv.weight[others[0]] = cb.conv.weight.mean(0)
        for i in first:
            cb.conv.weight[i] *= 5
    second = gm_prune(m, layer_rates(m, 0.5), incremental=False)["layer3.0.conv1"]
    assert others[0] in second and set(first) - set(second)  # some pruned filters came back
    assert (cb(x)[:, second] == 0).all()
