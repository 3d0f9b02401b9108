"""Model size (paper eq. 5) and BOPs (eq. 6), counted on the structure that is deployed.

Counting rules (the exported tables and the hardware follow the same structure):
- A pruned filter is removed: its output channel is exactly 0 (mask on the filter and on its
  BatchNorm), so it costs no weights and no MACs, and the input channels it fed are removed from
  the next conv.
- The residual stream keeps all its channels (a stream channel is written by every block of its
  stage and by the shortcut); a conv reads every stream channel that can be non-zero. A channel that
  is provably zero at that point (e.g. a stem filter that was pruned, before any block writes the
  channel, or the option-A zero padding) is not read and not counted.
- Size counts conv and FC weights x weight bits; biases and BatchNorm fold into the per-channel
  requantization constants. BOPs = MACs x weight bits x bits of the activations entering the layer
  (the image: 8 bits). The FP32 reference is the unpruned model at 32/32 bits.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .graph import Act, Add, AvgPool, Conv, Linear, MaxPool, ShortcutA
from .models import Net

INPUT_BITS = 8
FP_BITS = 32


@dataclass
class LayerCost:
    name: str
    kind: str
    filters: int
    kept: int
    in_channels: int  # input channels actually read (non-zero)
    weights: int
    macs: int
    wbits: int
    abits: int

    @property
    def size_bits(self) -> int:
        return self.weights * self.wbits

    @property
    def bops(self) -> int:
        return self.macs * self.wbits * self.abits

    def to_json(self) -> dict:
        return {**asdict(self), "size_bits": self.size_bits, "bops": self.bops}


def nonzero_channels(model: Net, fp32: bool = False) -> dict[str, list[int]]:
    """Channels of every graph tensor that can be non-zero, given the pruning masks."""
    nz: dict[str, list[int]] = {"input": [0, 1, 2]}
    for op in model.ops:
        if isinstance(op, Conv):
            mask = model.get_submodule(op.name).conv.mask
            nz[op.dst] = list(range(op.cout)) if fp32 else [i for i in range(op.cout) if mask[i] != 0]
        elif isinstance(op, Add):
            nz[op.dst] = sorted(set(nz[op.srcs[0]]) | set(nz[op.srcs[1]]))
        elif isinstance(op, ShortcutA):
            nz[op.dst] = [c + op.pad_before for c in nz[op.src]]
        elif isinstance(op, Linear):
            nz[op.dst] = list(range(op.cout))
        else:
            nz[op.dst] = nz[op.src]
    return nz


def layer_costs(model: Net, fp32: bool = False) -> list[LayerCost]:
    nz = nonzero_channels(model, fp32)
    abits = {"input": INPUT_BITS}
    out = []
    for op in model.ops:
        if isinstance(op, Act):
            abits[op.dst] = op.bits
        elif isinstance(op, Add):
            abits[op.dst] = max(abits[s] for s in op.srcs)
        elif isinstance(op, (ShortcutA, MaxPool, AvgPool)):
            abits[op.dst] = abits[op.src]
        if not isinstance(op, (Conv, Linear)):
            continue
        layer = model.weight_layers()[op.name]
        cin = len(nz[op.src])
        kept = len(nz[op.dst])
        if isinstance(op, Conv):
            weights = kept * cin * op.kernel ** 2
            macs, kind = weights * op.out_hw ** 2, "conv"
        else:
            weights = macs = kept * cin
            kind = "fc"
        wb, ab = (FP_BITS, FP_BITS) if fp32 else (layer.wq.bits, abits[op.src])
        out.append(LayerCost(op.name, kind, op.cout, kept, cin, weights, macs, wb, ab))
        abits[op.dst] = FP_BITS
    return out


def _totals(layers: list[LayerCost]) -> dict:
    return {"params": sum(l.weights for l in layers), "macs": sum(l.macs for l in layers),
            "size_bits": sum(l.size_bits for l in layers), "bops": sum(l.bops for l in layers)}


def model_metrics(model: Net, quantized: bool = True) -> dict:
    """Per-layer and total costs of the deployed model, the FP32 reference and the ratios.

    ``quantized=False`` counts the model at 32 bits (a full-precision checkpoint, pruned or not).
    """
    layers = layer_costs(model)
    if not quantized:
        for l in layers:
            l.wbits = l.abits = FP_BITS
    return _summary(model.spec.name, quantized, layers, layer_costs(model, fp32=True))


def _summary(name: str, quantized: bool, layers: list[LayerCost], fp32_layers: list[LayerCost]) -> dict:
    total, fp32 = _totals(layers), _totals(fp32_layers)
    return {"model": name, "quantized": quantized, "total": total, "fp32": fp32,
            "ratios": {"size": fp32["size_bits"] / total["size_bits"], "bops": fp32["bops"] / total["bops"]},
            "layers": [l.to_json() for l in layers]}


def tables_metrics(tables) -> dict:
    """``model_metrics`` of the model in exported layer tables (``shiftpq.ir.Tables``), counted
    from the deployed weight arrays themselves; the FP32 reference is the unpruned model of the same
    spec. Equals ``model_metrics`` of the exported model (tested)."""
    from .ir import FC, Conv
    from .models import ModelSpec
    layers = []
    for op in tables.ops:
        if not isinstance(op, (Conv, FC)):
            continue
        w = op.weight
        src = tables.tensors[op.src]
        abits = tables.level_set(src.levels).bits if src.levels is not None else src.bits
        wbits = tables.level_set(op.weight_levels).bits
        if isinstance(op, Conv):
            layers.append(LayerCost(op.name, "conv", op.filters, w.shape[0], w.shape[1], w.size,
                                    w.size * op.out_hw ** 2, wbits, abits))
        else:
            layers.append(LayerCost(op.name, "fc", w.shape[0], w.shape[0], w.shape[1], w.size, w.size, wbits, abits))
    fp32_layers = layer_costs(Net(ModelSpec.from_json(tables.spec)), fp32=True)
    return _summary(tables.model, True, layers, fp32_layers)


def format_table(m: dict) -> str:
    head = f"{'layer':<18}{'kept/filters':>13}{'in ch':>7}{'weights':>10}{'MACs':>13}{'W/A bits':>10}{'size (bit)':>13}{'BOPs':>16}"
    rows = [head, "-" * len(head)]
    for l in m["layers"]:
        rows.append(f"{l['name']:<18}{l['kept']:>6}/{l['filters']:<6}{l['in_channels']:>7}{l['weights']:>10,}"
                    f"{l['macs']:>13,}{l['wbits']:>5}/{l['abits']:<4}{l['size_bits']:>13,}{l['bops']:>16,}")
    t, f, r = m["total"], m["fp32"], m["ratios"]
    rows.append("-" * len(head))
    rows.append(f"{'total':<18}{'':>13}{'':>7}{t['params']:>10,}{t['macs']:>13,}{'':>10}{t['size_bits']:>13,}{t['bops']:>16,}")
    rows.append(f"{'FP32 reference':<18}{'':>13}{'':>7}{f['params']:>10,}{f['macs']:>13,}{'32/32':>10}{f['size_bits']:>13,}{f['bops']:>16,}")
    rows.append(f"size reduction {r['size']:.2f}x, BOPs reduction {r['bops']:.2f}x "
                f"(model size {t['size_bits'] / 8e6:.3f} MB vs {f['size_bits'] / 8e6:.3f} MB; "
                f"{t['bops'] / 1e9:.3f} GBOPs vs {f['bops'] / 1e9:.2f} GBOPs)")
    return "\n".join(rows)
