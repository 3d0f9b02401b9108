import pytest
import torch

from shiftpq.metrics import model_metrics
from shiftpq.graph import Conv
from shiftpq.models import MODEL_NAMES, ModelSpec, Net, build_model, count_parameters, preprocess


@pytest.mark.parametrize("name,params,macs", [("resnet20", 269_722, 40_550_400), ("resnet56", 853_018, 125_485_056)])
def test_fp32_resnet_parameters_and_macs(name, params, macs):
    m = build_model(name)
    assert count_parameters(m) == params
    fc_macs = 64 * 10
    assert model_metrics(m, quantized=False)["fp32"]["macs"] - fc_macs == macs
    assert round(macs / 1e6, 2) == {"resnet20": 40.55, "resnet56": 125.49}[name]


def test_resnet32_110_macs():
    assert round((model_metrics(build_model("resnet32"))["fp32"]["macs"] - 640) / 1e6, 2) == 68.86
    assert round((model_metrics(build_model("resnet110"))["fp32"]["macs"] - 640) / 1e6, 2) == 252.89


def test_vgg16_has_13_convs_with_batchnorm():
    m = build_model("vgg16")
    assert len(m.prunable()) == 13
    assert all(isinstance(cb.bn, torch.nn.BatchNorm2d) for cb in m.prunable().values())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_fp_and_quantized(name):
    m = build_model(name).eval()
    x = preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert m(x).shape == (2, 10)
    m.set_quant(True)
    assert torch.isfinite(m(x)).all()


def test_first_and_last_layers_are_8_bit():
    m = build_model("resnet20")
    layers = m.weight_layers()
    assert layers["stem"].wq.bits == 8 and layers["fc"].wq.bits == 8
    assert layers["layer1.0.conv1"].wq.bits == 4
    acts = m.act_quantizers()
    assert acts["pool_act"].bits == 8 and acts["stem_act"].bits == 8 and acts["layer2.1.act"].bits == 8
    assert acts["layer2.1.act_in"].bits == 4 and acts["layer2.1.act1"].bits == 4
    # every conv but the first reads 4-bit codes; the FC reads the 8-bit pooled stream
    bits = {l["name"]: (l["wbits"], l["abits"]) for l in model_metrics(m)["layers"]}
    assert bits.pop("stem") == (8, 8) and bits.pop("fc") == (8, 8)
    assert set(bits.values()) == {(4, 4)}


def test_residual_stream_is_quantized_and_feeds_the_shortcut():
    m = build_model("resnet20")
    adds = [op for op in m.ops if op.__class__.__name__ == "Add"]
    assert adds[1].srcs == ("layer1.1.conv2", "layer1.0.act")  # identity shortcut: the quantized stream
    assert m.act_quantizers()["layer1.0.act"].levels.kind == "uniform"


def test_layer_bits_override_and_unknown_layer():
    m = build_model("resnet20", layer_bits={"layer1.0.conv1": 3, "layer1.0.act1": 2})
    assert m.weight_layers()["layer1.0.conv1"].wq.bits == 3
    assert m.act_quantizers()["layer1.0.act1"].bits == 2
    with pytest.raises(ValueError, match="unknown layers"):
        build_model("resnet20", layer_bits={"nope": 4})


def test_preprocess_is_exact_centering():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert preprocess(x)[0, 0].flatten().tolist() == [-1.0, -1 / 128, 0.0, 127 / 128]


def test_metrics_json_shape():
    m = model_metrics(build_model("resnet20"), quantized=False)
    for key in ("params", "macs", "size_bits", "bops"):
        assert key in m["total"] and key in m["fp32"]
    assert m["ratios"] == {"size": 1.0, "bops": 1.0}
    assert m["fp32"]["bops"] == m["fp32"]["macs"] * 32 * 32


def test_tiny_takes_custom_widths_and_rejects_bad_ones():
    m = Net(ModelSpec("tiny", widths=(2, 3, 3)))
    assert [op.cout for op in m.ops if isinstance(op, Conv)] == [2, 2, 2, 3, 3, 3, 3]
    assert ModelSpec.from_json(m.spec.to_json()) == m.spec
    for bad in ((3, 2, 4), (0, 1, 2), (1, 2)):
        with pytest.raises(ValueError, match="widths"):
            Net(ModelSpec("tiny", widths=bad))
    with pytest.raises(ValueError, match="only the tiny models"):
        Net(ModelSpec("resnet20", widths=(16, 32, 64)))


def test_tiny_models_take_depth_and_the_plain_one_any_widths():
    from shiftpq.graph import Add, MaxPool
    deep = Net(ModelSpec("tiny", widths=(2, 3, 3), blocks=2))
    assert [op.cout for op in deep.ops if isinstance(op, Conv)] == [2] + [2] * 4 + [3] * 8
    assert [op.stride for op in deep.ops if isinstance(op, Conv)].count(2) == 2 and \
        sum(isinstance(op, Add) for op in deep.ops) == 6
    plain = Net(ModelSpec("tinyvgg", widths=(5, 2, 4), blocks=2))
    assert [op.cout for op in plain.ops if isinstance(op, Conv)] == [5, 5, 2, 2, 4, 4]
    assert sum(isinstance(op, MaxPool) for op in plain.ops) == 2 and not any(isinstance(op, Add) for op in plain.ops)
    assert plain(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert ModelSpec.from_json(plain.spec.to_json()) == plain.spec
    for bad in (dict(name="tiny", blocks=0), dict(name="resnet20", blocks=2)):
        with pytest.raises(ValueError, match="blocks"):
            Net(ModelSpec(**bad))
