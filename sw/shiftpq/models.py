"""CIFAR-10 models: ResNet-20/32/56/110 (He et al. 2016, option-A shortcuts), VGG-16, and two tiny
networks for fast hardware tests and architecture fuzzing: ``tiny`` (residual) and ``tinyvgg``
(plain convs and max pools), each with three stage widths and a number of convs or blocks per stage.

Every model is a set of modules plus a layer graph (graph.py) that its forward pass interprets.
Quantization layout (the same in training, the golden model and the hardware):
- the input is the 8-bit image, centered: ``x = (pixel - 128) / 128``; zero padding is pixel 128;
- the first conv and the FC have 8-bit uniform weights; the other convs ``wbits`` APoT weights;
- inside a residual block, the ReLU output is quantized to ``abits`` APoT (unsigned) codes; the
  residual stream (stem and block outputs) is quantized to ``stream_bits`` (8, uniform unsigned) and
  each block's first conv reads it through its own ``abits`` quantizer (``layerS.B.act_in``). All
  convs but the first therefore read ``abits`` codes, while the shortcut carries the finer
  stream: quantizing the stream itself to 4 bits cost 1.4 points on a pruned ResNet-20;
- in VGG-16 every ReLU output is quantized to ``abits`` codes;
- the global average pool's output is quantized to 8 bits (uniform) and feeds the 8-bit FC.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .graph import Act, Add, AvgPool, Conv, Linear, MaxPool, Op, ShortcutA, run_graph
from .levels import ACT_BITS, UNIFORM_BITS, WEIGHT_BITS
from .quant import ActQuant, ConvBN, QLinear, _QWeight

NUM_CLASSES = 10
EDGE_BITS = UNIFORM_BITS  # first conv, FC, and the FC's input

RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
MODEL_NAMES = (*RESNET_DEPTHS, "vgg16", "tiny", "tinyvgg")
TINY_MODELS = ("tiny", "tinyvgg")
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored (as JSON) in every checkpoint."""
    name: str
    wbits: int = 4
    abits: int = 4
    stream_bits: int = EDGE_BITS  # residual stream (ResNets)
    layer_bits: dict[str, int] = field(default_factory=dict)  # per-layer overrides, by module name
    widths: tuple[int, int, int] | None = None  # tiny models only: the three stage widths (default 4, 8, 16)
    blocks: int | None = None  # tiny models only: residual blocks (tiny) or convs (tinyvgg) per stage (default 1)

    def validate(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.name!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.wbits not in WEIGHT_BITS:
            raise ValueError(f"unsupported weight bits {self.wbits!r}; expected one of {WEIGHT_BITS}")
        for what, bits in (("activation", self.abits), ("residual stream", self.stream_bits)):
            if bits not in ACT_BITS:
                raise ValueError(f"unsupported {what} bits {bits!r}; expected one of {ACT_BITS}")
        if self.widths is not None and (self.name not in TINY_MODELS or len(self.widths) != 3 or min(self.widths) < 1
                                        or (self.name == "tiny" and list(self.widths) != sorted(self.widths))):
            raise ValueError(f"widths {self.widths!r}: only the tiny models take stage widths, three positive "
                             "integers, non-decreasing for tiny (the option-A shortcut pads channels, it cannot "
                             "drop them)")
        if self.blocks is not None and (self.name not in TINY_MODELS or self.blocks < 1):
            raise ValueError(f"blocks {self.blocks!r}: only the tiny models take a number of blocks per stage (>= 1)")

    def to_json(self) -> dict:
        d = {"name": self.name, "wbits": self.wbits, "abits": self.abits, "stream_bits": self.stream_bits,
             "layer_bits": dict(self.layer_bits)}
        if self.widths is not None:
            d["widths"] = list(self.widths)
        if self.blocks is not None:
            d["blocks"] = self.blocks
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        widths = d.get("widths")
        return cls(d["name"], d["wbits"], d["abits"], d["stream_bits"], dict(d["layer_bits"]),
                   tuple(widths) if widths is not None else None, d.get("blocks"))


class Net(nn.Module):
    """Modules + layer graph. ``forward`` takes centered images (N, 3, 32, 32) and returns logits."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        self.ops: list[Op] = []
        self._used_overrides: set[str] = set()
        tiny_widths, tiny_blocks = tuple(spec.widths or (4, 8, 16)), spec.blocks or 1
        if spec.name == "vgg16":
            self._build_vgg(VGG16_CFG)
        elif spec.name == "tinyvgg":
            w1, w2, w3 = tiny_widths
            self._build_vgg((w1,) * tiny_blocks + ("M",) + (w2,) * tiny_blocks + ("M",) + (w3,) * tiny_blocks)
        elif spec.name == "tiny":
            self._build_resnet(blocks=tiny_blocks, widths=tiny_widths)
        else:
            self._build_resnet(blocks=(RESNET_DEPTHS[spec.name] - 2) // 6, widths=(16, 32, 64))
        unknown = set(spec.layer_bits) - self._used_overrides
        if unknown:
            raise ValueError(f"layer_bits names unknown layers: {sorted(unknown)}")
        self._init_weights()

    # -- construction helpers ------------------------------------------------------------
    def _bits(self, name: str, default: int) -> int:
        if name in self.spec.layer_bits:
            self._used_overrides.add(name)
            return self.spec.layer_bits[name]
        return default

    def _conv(self, name, src, cin, cout, stride, hw, bits=None) -> str:
        bits = self._bits(name, self.spec.wbits if bits is None else bits)
        self.set_module(name, ConvBN(cin, cout, stride, bits))
        self.ops.append(Conv(name, src, name, cin, cout, 3, stride, 1, hw))
        return name

    def _act(self, name, src, bits=None) -> str:
        bits = self._bits(name, self.spec.abits if bits is None else bits)
        self.set_module(name, ActQuant(bits))
        self.ops.append(Act(name, src, name, bits))
        return name

    def set_module(self, name: str, module: nn.Module) -> None:
        parent, _, leaf = name.rpartition(".")
        owner = self
        for part in parent.split(".") if parent else []:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        owner.add_module(leaf, module)

    def _head(self, src, cin, hw) -> None:
        self.ops.append(AvgPool("pool", src, "pool", hw))
        self._act("pool_act", "pool", EDGE_BITS)
        self.set_module("fc", QLinear(cin, NUM_CLASSES, self._bits("fc", EDGE_BITS)))
        self.ops.append(Linear("fc", "pool_act", "fc", cin, NUM_CLASSES))

    def _build_resnet(self, blocks: int, widths: tuple[int, int, int]) -> None:
        hw, cin = 32, widths[0]
        stream = self.spec.stream_bits
        x = self._act("stem_act", self._conv("stem", "input", 3, cin, 1, hw, EDGE_BITS), stream)
        for stage, width in enumerate(widths, start=1):
            for b in range(blocks):
                stride = 2 if stage > 1 and b == 0 else 1
                p = f"layer{stage}.{b}"
                x_in = self._act(f"{p}.act_in", x)
                h = self._act(f"{p}.act1", self._conv(f"{p}.conv1", x_in, cin, width, stride, hw))
                out_hw = hw // stride
                y = self._conv(f"{p}.conv2", h, width, width, 1, out_hw)
                sc = x
                if stride != 1 or cin != width:
                    sc = f"{p}.shortcut"
                    self.ops.append(ShortcutA(sc, x, sc, stride, cin, width))
                self.ops.append(Add(f"{p}.add", (y, sc), f"{p}.add"))
                x = self._act(f"{p}.act", f"{p}.add", stream)
                cin, hw = width, out_hw
        self._head(x, cin, hw)

    def _build_vgg(self, cfg: tuple) -> None:
        """Plain 3x3 convs (ints: filters) and 2x2 max pools ("M"), then the average-pool head."""
        hw, cin, x, i = 32, 3, "input", 0
        for v in cfg:
            if v == "M":
                self.ops.append(MaxPool(f"pool{i}", x, f"pool{i}", 2))
                x, hw = f"pool{i}", hw // 2
                continue
            name = "stem" if i == 0 else f"features.conv{i}"
            x = self._act(f"{name}_act" if i == 0 else f"features.act{i}",
                          self._conv(name, x, cin, v, 1, hw, EDGE_BITS if i == 0 else None))
            cin, i = v, i + 1
        self._head(x, cin, hw)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- interface -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_graph(self, self.ops, x)

    def prunable(self) -> dict[str, ConvBN]:
        """Every conv (with its BatchNorm), by name, in graph order: all are pruned by GM."""
        return {op.name: self.get_submodule(op.name) for op in self.ops if isinstance(op, Conv)}

    def weight_layers(self) -> dict[str, _QWeight]:
        layers = {n: m.conv for n, m in self.prunable().items()}
        layers["fc"] = self.fc
        return layers

    def act_quantizers(self) -> dict[str, ActQuant]:
        return {op.name: self.get_submodule(op.name) for op in self.ops if isinstance(op, Act)}

    def set_quant(self, enabled: bool) -> None:
        for layer in self.weight_layers().values():
            layer.wq.enabled = enabled
        for q in self.act_quantizers().values():
            q.enabled = enabled

    @property
    def quantized(self) -> bool:
        return self.fc.wq.enabled

    @property
    def frozen(self) -> bool:
        """Its weights are in deployment form (``_QWeight.freeze``): level indices, not trainable."""
        return any(layer.frozen for layer in self.weight_layers().values())

    def weight_layer_paths(self) -> dict[str, _QWeight]:
        """The weight layers by module path (their state dict prefix), e.g. ``stem.conv``, ``fc``."""
        return {n: m for n, m in self.named_modules() if isinstance(m, _QWeight)}

    def alphas(self) -> dict[str, float]:
        out = {n: float(l.wq.alpha.detach()) for n, l in self.weight_layers().items()}
        out.update({n: float(q.alpha.detach()) for n, q in self.act_quantizers().items()})
        return out


def build_model(name: str, wbits: int = 4, abits: int = 4, layer_bits: dict[str, int] | None = None,
                stream_bits: int = EDGE_BITS) -> Net:
    return Net(ModelSpec(name, wbits, abits, stream_bits, dict(layer_bits or {})))


def count_parameters(model: Net) -> int:
    """Parameters of the network itself (quantizer clipping thresholds excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("alpha"))


def preprocess(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, 32, 32) -> the model's centered input, exactly (pixel - 128) / 128."""
    return (images_u8.float() - 128.0) / 128.0


def model_input(images_u8: torch.Tensor) -> torch.Tensor:
    """What training and calibration feed the model: ``preprocess``, channels_last on CUDA."""
    x = preprocess(images_u8)
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
