"""Geometric-Median (FPGM) filter pruning: the one home of the GM distance and of the masks.

A filter's GM score is the sum of its Euclidean distances to the other filters of its layer
(He et al., CVPR 2019, eq. 3 of the SPQ/PPQ paper); the filters with the smallest score are the
most replaceable and are pruned. Scores use the full-precision weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .graph import Act, Add, Conv, ShortcutA
from .models import Net


def gm_scores(weight: torch.Tensor) -> torch.Tensor:
    """Sum of Euclidean distances from each filter (dim 0) to all others, in float64."""
    f = weight.detach().flatten(1).double().cpu()
    return torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist").sum(1)


def n_pruned(n_filters: int, rate: float) -> int:
    return int(n_filters * rate)


def gm_select(weight: torch.Tensor, n_prune: int, candidates: list[int] | None = None) -> list[int]:
    """The ``n_prune`` filters nearest the geometric median of ``candidates`` (default: all).

    Distances are measured among the candidates only; ties go to the lower index.
    """
    cand = list(range(weight.shape[0])) if candidates is None else sorted(candidates)
    if n_prune <= 0 or not cand:
        return []
    scores = gm_scores(weight[cand])
    order = sorted(range(len(cand)), key=lambda i: (float(scores[i]), cand[i]))
    return sorted(cand[i] for i in order[:n_prune])


def check_rate(rate: float, what: str = "pruning rate") -> float:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {rate!r}")
    return rate


def layer_rates(model: Net, rate: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """Pruning rate of every conv: ``rate`` unless ``overrides`` names the layer."""
    overrides = dict(overrides or {})
    names = list(model.prunable())
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"pruning rate given for unknown layers {sorted(unknown)}; convs are {names}")
    return {n: check_rate(overrides.get(n, rate), f"pruning rate of {n}") for n in names}


@dataclass
class StreamGroup:
    """Convs that write into one residual stream (the stem or the last conv of every block of a stage).

    A stream channel is zero, and can be dropped from the next convs' inputs, only if every member
    prunes it and the shortcut brings a zero into it: an option-A padding channel, or a channel the
    parent stream (``parent``, shifted by ``pad_before``) already dropped.
    """
    members: list[str]
    width: int
    parent: int | None = None
    pad_before: int = 0
    parent_width: int = 0


def stream_groups(model: Net) -> list[StreamGroup]:
    """Residual streams of the graph, parents before children (none for plain networks)."""
    producer = {op.dst: op for op in model.ops}
    stream_of: dict[str, int] = {}
    groups: list[StreamGroup] = []

    def stream(t: str) -> int:
        if t in stream_of:
            return stream_of[t]
        op = producer[t]
        if isinstance(op, Act):
            sid = stream(op.src) if op.src in stream_of or not isinstance(producer[op.src], Conv) else None
            if sid is None:
                conv = producer[op.src]
                groups.append(StreamGroup([conv.name], conv.cout))
                sid = len(groups) - 1
        elif isinstance(op, ShortcutA):
            parent = stream(op.src)
            groups.append(StreamGroup([], op.cout, parent, op.pad_before, op.cin))
            sid = len(groups) - 1
        else:
            raise ValueError(f"residual input {t!r} comes from an unsupported op {type(op).__name__}")
        stream_of[t] = sid
        return sid

    for op in model.ops:
        if isinstance(op, Add):
            branch, short = op.srcs
            sid = stream(short)
            groups[sid].members.append(producer[branch].name)
            stream_of[op.dst] = sid
        elif isinstance(op, Act) and op.src in stream_of:
            stream_of[op.dst] = stream_of[op.src]
    return groups


def _pruned(mask: torch.Tensor) -> list[int]:
    return [i for i in range(mask.numel()) if mask[i] == 0]


@torch.no_grad()
def gm_prune(model: Net, rates: dict[str, float], incremental: bool, grouped: bool = False) -> dict[str, list[int]]:
    """Update every conv's filter mask so that int(N * rate) filters are pruned.

    ``incremental`` (PPQ): already pruned filters stay pruned and the extra ones are chosen by GM
    among the kept filters. Otherwise (SPQ) the selection is redone over all filters.
    ``grouped``: the convs of one residual stream (stream_groups) prune the same channels, chosen
    by the sum of their per-layer GM scores (each divided by its layer's mean), so that the stream
    itself loses those channels; other convs are pruned per layer as usual.
    Returns the pruned filter indices per layer.
    """
    convs = model.prunable()
    pruned: dict[str, list[int]] = {}
    g_pruned: list[list[int]] = []  # per stream group, in stream_groups order
    if grouped:
        for g in stream_groups(model):
            group_rates = {rates[n] for n in g.members}
            if len(group_rates) != 1:
                raise ValueError(f"grouped pruning needs one rate for the residual stream {g.members}, got {sorted(group_rates)}")
            target = n_pruned(g.width, group_rates.pop())
            lead = convs[g.members[0]].conv.mask
            gone = _pruned(lead) if incremental else []
            allowed = set(range(g.width))
            if g.parent is not None:
                allowed = ({c for c in range(g.width) if not g.pad_before <= c < g.pad_before + g.parent_width}
                           | {c + g.pad_before for c in g_pruned[g.parent]})
            cand = sorted(allowed - set(gone))
            score = torch.zeros(g.width, dtype=torch.float64)
            kept = [c for c in range(g.width) if c not in gone]
            for n in g.members:
                s = gm_scores(convs[n].conv.weight[kept])
                score[kept] += s / s.mean().clamp_min(1e-30)
            extra = sorted(cand, key=lambda c: (float(score[c]), c))[:max(0, target - len(gone))]
            sel = sorted(gone + extra)
            for n in g.members:
                pruned[n] = sel
            g_pruned.append(sel)
    for name, cb in convs.items():
        w, mask = cb.conv.weight, cb.conv.mask
        if name not in pruned:
            target = n_pruned(w.shape[0], rates[name])
            if incremental:
                gone = _pruned(mask)
                kept = [i for i in range(w.shape[0]) if mask[i] != 0]
                pruned[name] = sorted(gone + gm_select(w, target - len(gone), kept))
            else:
                pruned[name] = gm_select(w, target)
        mask.fill_(1.0)
        mask[pruned[name]] = 0.0
    return pruned


@torch.no_grad()
def zero_pruned(model: Net, optimizer: torch.optim.Optimizer | None = None, weights_only: bool = False) -> None:
    """Hard pruning: write exact zeros into pruned filters, their BatchNorm scale and shift and
    (with an optimizer) their momentum, so that neither momentum nor weight decay revives them.
    ``weights_only`` (soft pruning, SPQ's revive variant): zero the filters' weights alone, which
    leaves them free to grow back."""
    for cb in model.prunable().values():
        keep = cb.conv.mask
        params = ((cb.conv.weight, (-1, 1, 1, 1)),) if weights_only else \
            ((cb.conv.weight, (-1, 1, 1, 1)), (cb.bn.weight, (-1,)), (cb.bn.bias, (-1,)))
        for p, shape in params:
            p.mul_(keep.view(shape))
            if optimizer is not None and p in optimizer.state:
                for v in optimizer.state[p].values():
                    if torch.is_tensor(v) and v.shape == p.shape:
                        v.mul_(keep.view(shape))


def kept_filters(model: Net) -> dict[str, int]:
    return {n: int(cb.conv.mask.sum()) for n, cb in model.prunable().items()}
