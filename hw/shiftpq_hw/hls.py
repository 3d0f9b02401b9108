"""Layer tables -> HLS C++ for vendor tools (Vitis HLS and the like): the backend behind
``shiftpq gen --backend hls``.

The design follows the same hardware plan as the RTL (``plan.make_plan``: the same blocks, each conv
engine's lanes x simd fold, the shortcut FIFOs' depths) and the same integer semantics
(docs/integer-semantics.md, ``shiftpq.intops``). Python decides every number here: the integer width
of every tensor, accumulator, constant and intermediate, every loop bound, every constant array (in
the order the loops read it, padded to whole lanes and chunks with zero weights); the templates under
``templates/hls/`` only render. Writes ``<out>/hls/``:

    shiftpq_types.h     the widths as ``ap_int``/``ap_uint`` and ``hls::stream`` under a vendor tool
                        (``__SYNTHESIS__`` or ``SHIFTPQ_VENDOR_HLS``), standard fixed-width types and
                        the queue of ``shiftpq_gxx.h`` under g++
    shiftpq_gxx.h       the g++-only stream (a queue) and AXI4-Stream beat types
    shiftpq_params.h    weights and requantization constants as const arrays
    shiftpq_top.h/.cpp  one function per block, streams between them, the DATAFLOW top level
    tb_csim.cpp         the C simulation testbench (images file in, scores file out)
    Makefile            the g++ C simulation build
    run_vitis.tcl       csim, csynth, cosim and export with Vitis HLS (part and clock as parameters)

plus ``<out>/tables/`` and ``<out>/cycles.json`` exactly as the RTL generator writes them, so that
``shiftpq sim --backend hls`` reads only the generator's output. The same tables and ``par`` give
byte-identical files.
"""
from __future__ import annotations

import filecmp
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from shiftpq import intops, ir
from shiftpq.atomic import atomic_dir, prepare_output, temporary_prefix
from shiftpq.errors import ShiftPQError
from shiftpq.golden import Golden
from shiftpq.ir import Tables
from shiftpq.tables import save_tables
from shiftpq.templating import render

from .outputs import generator_digest
from .plan import Block, Kind, cycle_model, make_plan

TOP = "shiftpq_top"
HLS_DIR = "hls"
STD_WIDTHS = (8, 16, 32, 64)
DEFAULT_STREAM_DEPTH = 2  # a register slice between two blocks; shortcut FIFOs take the plan's depth
# g++ C simulation flags (the pragmas and loop labels are for the vendor tool: g++ would warn about each)
CXXFLAGS = "-std=c++17 -O2 -Wall -Wextra -Werror -Wno-unknown-pragmas -Wno-unused-label"
# the synthesizable sources (what the hygiene test and the vendor tool's add_files read)
DESIGN_FILES = ("shiftpq_types.h", "shiftpq_params.h", f"{TOP}.h", f"{TOP}.cpp")
FILES = DESIGN_FILES + ("shiftpq_gxx.h", "tb_csim.cpp", "Makefile", "run_vitis.tcl")
ROW = 24  # numbers per line of a constant array


def ident(name: str) -> str:
    """A C identifier for a tensor or op name."""
    return re.sub(r"\W", "_", name)


class Types:
    """The integer types of the design, by name: ``ap_int<W>`` / ``ap_uint<W>`` for a vendor tool,
    the smallest standard type that holds W bits for g++."""

    def __init__(self):
        self.defs: dict[str, dict] = {}

    def add(self, name: str, bits: int, signed: bool) -> str:
        if bits > STD_WIDTHS[-1]:
            raise ShiftPQError(f"HLS backend: type {name} needs {bits} bits, more than the {STD_WIDTHS[-1]} "
                               "of the widest standard integer the g++ C simulation can use")
        std = next(w for w in STD_WIDTHS if w >= bits)
        d = {"name": name, "bits": int(bits), "vendor": f"ap_{'' if signed else 'u'}int<{bits}>",
             "gxx": f"{'' if signed else 'u'}int{std}_t"}
        if self.defs.setdefault(name, d) != d:
            raise ShiftPQError(f"HLS backend: type {name} defined twice with different widths")
        return name

    def signed(self, name: str, lo: int, hi: int) -> str:
        return self.add(name, intops.signed_bits(lo, hi), True)

    def unsigned(self, name: str, hi: int) -> str:
        return self.add(name, intops.unsigned_bits(hi), False)


def rows(values) -> list[str]:
    """A flat integer array as lines of comma-separated numbers (the template joins them)."""
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    return [", ".join(str(v) for v in flat[i:i + ROW]) for i in range(0, len(flat), ROW)] or ["0"]


def _const(name: str, ctype: str, values, dims=None) -> dict:
    a = np.asarray(values)
    return {"name": name, "type": ctype, "dims": list(dims if dims is not None else a.shape), "rows": rows(a)}


class Design:
    """The render context of one network: types, streams, constants and the blocks in order."""

    def __init__(self, tables: Tables, par: int | None):
        self.t = tables
        self.plan = make_plan(tables, par)
        self.types = Types()
        self.consts: list[dict] = []
        self.blocks: list[dict] = []
        self.streams: dict[str, dict] = {}
        self.golden = Golden(tables)
        self.decoders: dict[str, dict] = {}
        self.term_tables: dict[str, dict] = {}
        self._build()

    # -- tensors and streams ---------------------------------------------------------------------
    def tensor(self, name: str) -> dict:
        """The pixel type of a streamed tensor: its code type, channel count, value type, decoder."""
        info = self.t.tensors[name.split("@")[0]]
        tid = ident(name.split("@")[0])
        if info.kind == ir.TensorKind.IMAGE:
            code = self.types.signed(f"{tid}_code_t", info.lo, info.hi)
            return {"id": tid, "px": f"{tid}_px_t", "code": code, "value": code, "decode": None,
                    "channels": len(info.channels), "hw": info.hw, "lo": info.lo, "hi": info.hi}
        if info.kind != ir.TensorKind.CODES:
            raise ShiftPQError(f"HLS backend: tensor {name!r} of kind {info.kind} is not streamed between blocks")
        ints = self.t.level_set(info.levels).ints
        code = self.types.unsigned(f"{tid}_code_t", len(ints) - 1)
        value = self.types.signed(f"{tid}_value_t", 0, ints[-1])
        return {"id": tid, "px": f"{tid}_px_t", "code": code, "value": value,
                "decode": self.decoder(info.levels), "channels": len(info.channels), "hw": info.hw,
                "lo": 0, "hi": int(ints[-1])}

    def decoder(self, levels: str) -> str | None:
        """The code -> level value table of a level set (None where the code is the value)."""
        ints = list(self.t.level_set(levels).ints)
        if ints == list(range(len(ints))):
            return None
        name = f"DEC_{ident(levels)}"
        if name not in self.decoders:
            vt = self.types.signed(f"{ident(levels)}_level_t", 0, ints[-1])
            self.decoders[name] = _const(name, vt, ints)
        return name

    def stream(self, tensor: str, reader: str, depth: int = DEFAULT_STREAM_DEPTH) -> str:
        """The stream that carries ``tensor`` to one reader."""
        t = self.tensor(tensor)
        s = f"s_{t['id']}__{ident(reader)}"
        self.streams[s] = {"name": s, "px": t["px"], "depth": int(depth), "tensor": tensor}
        return s

    # -- the network ---------------------------------------------------------------------------
    def _build(self):
        t = self.t
        inp = t.input
        readers: dict[str, list[tuple[str, str]]] = {}  # tensor -> [(reader block, port)]
        for blk in self.plan.blocks:
            for port, tensor in blk.inputs:
                readers.setdefault(tensor, []).append((blk.name, port))
        # shortcut FIFO depths: the stream a shortcut block writes is its FIFO
        depth_of = {blk.output: blk.depth for blk in self.plan.blocks if blk.kind == Kind.SHORTCUT}
        # every tensor's producer writes one stream per reader (a fork where there are several)
        self._in_streams: dict[tuple[str, str], str] = {}
        pixel_types = {}
        for tensor, rd in readers.items():
            depth = depth_of.get(tensor, DEFAULT_STREAM_DEPTH)
            outs = [self.stream(tensor, f"{reader}_{port}", depth) for reader, port in rd]
            for (reader, port), s in zip(rd, outs):
                self._in_streams[(reader, port)] = s
            pixel_types[tensor] = p = self.tensor(tensor)
            if len(outs) > 1:  # a tensor read twice: the producer writes a fork, the fork each reader
                src = self.stream(tensor, "fork", depth)
                self.blocks.append({"kind": "fork", "fn": f"fork_{p['id']}", "name": f"fork of {tensor}",
                                    "px": p["px"], "pixels": p["hw"] ** 2, "in": src, "outs": outs,
                                    "tensor": tensor})
                self._in_streams[("__out__", tensor)] = src
            else:
                self._in_streams[("__out__", tensor)] = outs[0]
        self.pixels = sorted({p["px"]: p for p in pixel_types.values()}.values(), key=lambda p: p["px"])
        blocks = [self._input(inp)]
        render = {Kind.CONV: self._conv, Kind.LUT: self._lut, Kind.SHORTCUT: self._shortcut,
                  Kind.MAXPOOL: self._maxpool, Kind.AVGPOOL: self._avgpool, Kind.FC: self._fc}
        for blk in self.plan.blocks:
            if blk.kind not in render:
                raise ShiftPQError(f"HLS backend: block {blk.name!r} ({blk.kind}) has no HLS function")
            blocks.append(render[blk.kind](blk.name, blk, blk.inputs, blk.output))
        self.blocks = _topological(blocks + self.blocks)
        fns = [b["fn"] for b in self.blocks]
        if len(set(fns)) != len(fns):
            raise ShiftPQError(f"HLS backend: two blocks map to one C function name: {sorted(fns)}")

    def _out(self, tensor: str) -> str:
        return self._in_streams[("__out__", tensor)]

    def _in(self, block: str, port: str) -> str:
        return self._in_streams[(block, port)]

    def _input(self, inp: str) -> dict:
        c, h, w = ir.INPUT_SHAPE
        return {"kind": "input", "fn": "read_image", "name": "input bytes", "out": self._out(inp),
                "out_tensor": inp, "px": self.tensor(inp)["px"], "channels": c, "pixels": h * w,
                "offset": ir.IMAGE_OFFSET, "code": self.tensor(inp)["code"]}

    def _conv(self, name: str, blk: Block, ins, out) -> dict:
        t = self.t
        conv, rq = (t.op(n) for n in blk.ops)  # the plan's fused pair
        fid = ident(name)
        src, dst = self.tensor(conv.src), self.tensor(out)
        w = conv.weight.astype(np.int64)
        if isinstance(rq, ir.Add):  # lanes over the add's output channels; zero filters where the conv has none
            w = np.stack([w[j] if j >= 0 else np.zeros_like(w[0]) for j in rq.conv_index])
        cout, cin, k = w.shape[0], w.shape[1], conv.kernel
        lanes, simd, groups, chunks = blk.lanes, blk.simd, blk.groups, blk.chunks
        if cout != dst["channels"] or cin != src["channels"]:
            raise ShiftPQError(f"HLS backend: conv {name!r} weights {w.shape} disagree with its tensors")
        # weights in the order the engine reads them: [group][tap][chunk][lane][simd], zero-padded
        wp = np.zeros((groups * lanes, chunks * simd, k, k), dtype=np.int64)
        wp[:cout, :cin] = w
        worder = wp.reshape(groups, lanes, chunks, simd, k * k).transpose(0, 4, 2, 1, 3)
        wl = t.level_set(conv.weight_levels)
        wcode = self.types.signed(f"{fid}_w_t", -(len(wl.ints) - 1), len(wl.ints) - 1)
        self.consts.append(_const(f"W_{fid}", wcode, worder))
        # accumulator: acc_bits, the manifest's range, widened if these weights can reach further from
        # this input's range (every partial sum lies between a channel's lo and hi: 0 is in the range)
        wval = intops.decode_weights(w, wl.ints)
        lo, hi, _ = intops.conv_bounds(wval, min(src["lo"], 0), src["hi"])
        acc_info = t.tensors[conv.dst]
        accs = (min(int(lo.min(initial=0)), acc_info.lo), max(int(hi.max(initial=0)), acc_info.hi))
        acc = self.types.signed(f"{fid}_acc_t", *accs)
        shift_add = wl.kind == "apot" and src["lo"] >= 0
        terms = self.terms(conv.weight_levels) if shift_add else None
        d = {"kind": "conv", "fn": f"conv_{fid}", "name": name, "in": self._in(name, "i"), "out": self._out(out),
             "out_tensor": out, "src": src, "dst": dst, "acc": acc, "wcode": wcode, "W": f"W_{fid}",
             "hw": conv.in_hw, "out_hw": conv.out_hw, "k": k, "taps": k * k, "stride": conv.stride,
             "pad": conv.padding, "cin": cin, "cin_pad": chunks * simd, "cout": cout, "cout_pad": groups * lanes,
             "lanes": lanes, "simd": simd, "groups": groups, "chunks": chunks,
             **_rows(conv.in_hw, conv.out_hw, k, conv.stride, conv.padding),
             "shift_add": shift_add, "terms": terms, "residual": None,
             "cycles": blk.cycles}
        if isinstance(rq, ir.Add):
            sc = self.tensor(rq.shortcut_src)
            smul = rq.shortcut_mul
            sidx = np.array(rq.shortcut_index)
            if np.any(smul[sidx < 0] != 0):
                raise ShiftPQError(f"HLS backend: add {rq.name!r} has a shortcut multiplier for a channel "
                                   "the shortcut does not carry")
            d["residual"] = {"in": self._in(name, "r"), "src": sc,
                             "index": f"SCI_{fid}", "smul": f"SMUL_{fid}"}
            self.consts.append(_const(f"SCI_{fid}", self.types.unsigned(f"{fid}_sci_t", sc["channels"] - 1),
                                      self._pad(np.where(sidx < 0, 0, sidx), groups * lanes)))
            self.consts.append(self._mulconst(f"SMUL_{fid}", smul, groups * lanes, fid))
            d["requant"] = self._affine(fid, rq, accs, dst, groups * lanes, extra=[(sc["hi"], smul)],
                                        declared=rq.product_bits)
        elif rq.mode == ir.RequantMode.THRESHOLD:
            d["requant"] = self._threshold(fid, rq, accs, groups * lanes)
        else:
            d["requant"] = self._affine(fid, rq, accs, dst, groups * lanes, declared=rq.product_bits)
        return d

    def terms(self, levels: str) -> dict:
        """The shift-add decomposition of a weight level set: per level index, how many shifted
        copies of the activation it sums and by how much each is shifted."""
        lv = self.t.level_set(levels)
        name = f"WT_{ident(levels)}"
        if name not in self.term_tables:
            terms = lv.terms
            nt = max(len(x) for x in terms)
            n = [len(x) for x in terms]
            sh = [[x[j] if j < len(x) else 0 for x in terms] for j in range(nt)]
            nty = self.types.unsigned(f"{ident(levels)}_nterms_t", nt)
            shty = self.types.unsigned(f"{ident(levels)}_shift_t", max(max(x) for x in sh))
            self.term_tables[name] = {"count": _const(f"{name}_N", nty, n), "shift": _const(f"{name}_S", shty, sh),
                                      "nt": nt, "n": f"{name}_N", "s": f"{name}_S"}
        return self.term_tables[name]

    @staticmethod
    def _pad(a, n: int, value: int = 0) -> np.ndarray:
        a = np.asarray(a, dtype=np.int64)
        return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], value, dtype=np.int64)])

    def _mulconst(self, name: str, mul, n: int, fid: str) -> dict:
        mty = self.types.signed(f"{fid}_mul_t", -intops.MUL_MAX, intops.MUL_MAX)
        if np.abs(mul).max(initial=0) > intops.MUL_MAX:
            raise ShiftPQError(f"HLS backend: {name}: a multiplier exceeds {intops.MUL_BITS} bits")
        return _const(name, mty, self._pad(mul, n))

    def _affine(self, fid: str, rq: ir.Requant | ir.Add, accs: tuple[int, int], dst: dict, n: int, extra=(),
                declared=None) -> dict:
        t = self.t
        mul, bias, shift = rq.mul, rq.bias, rq.shift
        bound = max(-accs[0], accs[1])
        bits = intops.affine_bits([bound] + [b for b, _ in extra], [mul] + [m for _, m in extra], bias)
        bits = max(bits, int(declared or 0))
        top = len(t.level_set(rq.levels).ints) - 1
        self.consts.append(self._mulconst(f"MUL_{fid}", mul, n, fid))
        bty = self.types.signed(f"{fid}_bias_t", min(int(bias.min()), 0), max(int(bias.max()), 0))
        self.consts.append(_const(f"BIAS_{fid}", bty, self._pad(bias, n)))
        sty = self.types.unsigned(f"{fid}_shift_t", int(shift.max()))
        self.consts.append(_const(f"SHIFT_{fid}", sty, self._pad(shift, n)))
        return {"mode": "affine", "prod": self.types.add(f"{fid}_prod_t", bits, True), "top": top,
                "mul": f"MUL_{fid}", "bias": f"BIAS_{fid}", "shift": f"SHIFT_{fid}", "code": dst["code"]}

    def _threshold(self, fid: str, rq: ir.Requant, accs: tuple[int, int], n: int) -> dict:
        th, sign = rq.thresholds, rq.sign
        # the comparison's width: the thresholds, the accumulator and its negation
        cty = self.types.signed(f"{fid}_cmp_t", min(int(th.min(initial=0)), accs[0], -accs[1]),
                                max(int(th.max(initial=0)), accs[1], -accs[0]))
        self.consts.append(_const(f"TH_{fid}", cty, self._pad(th, n)))
        self.consts.append(_const(f"NEG_{fid}", "bool", self._pad(sign < 0, n)))
        return {"mode": "threshold", "cmp": cty, "levels": th.shape[1], "th": f"TH_{fid}", "neg": f"NEG_{fid}"}

    def _lut(self, name: str, blk: Block, ins, out) -> dict:
        fid = ident(name)
        src, dst = self.tensor(ins[0][1]), self.tensor(out)
        self.consts.append(_const(f"LUT_{fid}", dst["code"], self.golden.code_table(name)))
        return {"kind": "lut", "fn": f"lut_{fid}", "name": name, "in": self._in(name, "i"), "out": self._out(out),
                "out_tensor": out, "src": src, "dst": dst, "pixels": src["hw"] ** 2, "lut": f"LUT_{fid}"}

    def _shortcut(self, name: str, blk: Block, ins, out) -> dict:
        src = self.tensor(ins[0][1])
        return {"kind": "shortcut", "fn": f"shortcut_{ident(name)}", "name": name, "in": self._in(name, "i"),
                "out": self._out(out), "out_tensor": out, "src": src, "dst": self.tensor(out), "hw": src["hw"],
                "stride": blk.stride, "depth": blk.depth}

    def _maxpool(self, name: str, blk: Block, ins, out) -> dict:
        op = self.t.op(name)
        src, dst = self.tensor(ins[0][1]), self.tensor(out)
        k = op.size
        return {"kind": "maxpool", "fn": f"maxpool_{ident(name)}", "name": name, "in": self._in(name, "i"),
                "out": self._out(out), "out_tensor": out, "src": src, "dst": dst, "hw": src["hw"], "size": k,
                "out_hw": src["hw"] // k, "used": src["hw"] // k * k}

    def _avgpool(self, name: str, blk: Block, ins, out) -> dict:
        t = self.t
        op, rq = (t.op(n) for n in blk.ops)  # the pool and its requant
        fid = ident(name)
        src, dst = self.tensor(ins[0][1]), self.tensor(out)
        info = t.tensors[op.dst]
        top = op.hw ** 2 * src["hi"]
        sty = self.types.signed(f"{fid}_sum_t", min(info.lo, 0), max(info.hi, top))
        return {"kind": "avgpool", "fn": f"avgpool_{fid}", "name": name, "in": self._in(name, "i"),
                "out": self._out(out), "out_tensor": out, "src": src, "dst": dst, "pixels": op.hw ** 2,
                "sum": sty, "lanes": blk.lanes, "channels": src["channels"],
                "requant": self._affine(fid, rq, (0, max(info.hi, top)), dst, src["channels"],
                                        declared=rq.product_bits)}

    def _fc(self, name: str, blk: Block, ins, out) -> dict:
        t = self.t
        op = t.op(name)
        fid = ident(name)
        src = self.tensor(ins[0][1])
        w = op.weight.astype(np.int64)
        classes, cin = w.shape
        simd, chunks = blk.simd, blk.chunks
        wp = np.zeros((classes, chunks * simd), dtype=np.int64)
        wp[:, :cin] = w
        wl = t.level_set(op.weight_levels)
        wval = intops.decode_weights(wp, wl.ints)
        wty = self.types.signed(f"{fid}_w_t", int(wval.min(initial=0)), int(wval.max(initial=0)))
        self.consts.append(_const(f"W_{fid}", wty, wval.reshape(classes, chunks, simd)))
        lo, hi, _ = intops.conv_bounds(wval[:, :, None, None], min(src["lo"], 0), src["hi"])
        alo = min(int(lo.min()), -(1 << (op.acc_bits - 1)))
        ahi = max(int(hi.max()), (1 << (op.acc_bits - 1)) - 1)
        aty = self.types.signed(f"{fid}_acc_t", alo, ahi)
        bias = op.bias
        bty = self.types.signed(f"{fid}_bias_t", min(int(bias.min()), 0), max(int(bias.max()), 0))
        self.consts.append(_const(f"BIAS_{fid}", bty, bias))
        # (acc << shift) and (acc << shift) + bias
        s = 1 << op.shift
        wide = self.types.signed(f"{fid}_wide_t", min(alo * s, alo * s + min(int(bias.min()), 0)),
                                 max(ahi * s, ahi * s + max(int(bias.max()), 0)))
        scores = t.tensors[op.dst]
        if scores.lo < -(1 << 31) or scores.hi > (1 << 31) - 1:
            raise ShiftPQError(f"HLS backend: scores of {name!r} span [{scores.lo}, {scores.hi}], beyond int32")
        return {"kind": "fc", "fn": f"fc_{fid}", "name": name, "in": self._in(name, "i"), "out_tensor": out,
                "src": src, "classes": classes, "cin": cin, "cin_pad": chunks * simd, "simd": simd, "chunks": chunks,
                "acc": aty, "wide": wide, "shift": int(op.shift), "W": f"W_{fid}", "bias": f"BIAS_{fid}"}

    # -- output ----------------------------------------------------------------------------------
    def context(self) -> dict:
        c, h, w = ir.INPUT_SHAPE
        return {"top": TOP, "model": self.t.model, "source": json.dumps(self.t.source or {}, sort_keys=True),
                "par": self.plan.par, "cycles_per_image": self.plan.period,
                "types": list(self.types.defs.values()), "pixels": self.pixels, "blocks": self.blocks,
                "streams": sorted(self.streams.values(), key=lambda s: s["name"]),
                "consts": list(self.decoders.values()) +
                [c for tt in self.term_tables.values() for c in (tt["count"], tt["shift"])] + self.consts,
                "image_bytes": c * h * w, "classes": self.t.classes, "cxxflags": CXXFLAGS,
                "design_files": list(DESIGN_FILES)}


def block_inputs(b: dict) -> list[str]:
    """The streams a block reads."""
    return [s for s in (b.get("in"), (b.get("residual") or {}).get("in")) if s]


def block_outputs(b: dict) -> list[str]:
    """The streams a block writes (none for the FC: it writes the top level's score port)."""
    return b.get("outs") or ([b["out"]] if b.get("out") else [])


def _topological(blocks: list[dict]) -> list[dict]:
    """The blocks with every one after the producers of its input streams (else in the plan's order):
    the order of the DATAFLOW region, in which a C simulation runs them one after another."""
    producer = {s: i for i, b in enumerate(blocks) for s in block_outputs(b)}
    done, order = set(), []
    while len(order) < len(blocks):
        ready = [i for i, b in enumerate(blocks) if i not in done and all(producer[s] in done for s in block_inputs(b))]
        if not ready:
            raise ShiftPQError("HLS backend: the blocks' streams form a cycle")
        done.add(ready[0])
        order.append(blocks[ready[0]])
    return order


def _rows(hw: int, out_hw: int, k: int, stride: int, pad: int) -> dict:
    """The line buffer's schedule: output row ``oy`` reads input rows up to
    ``min(stride * oy + k - 1 - pad, hw - 1)``; the most rows one output row loads (the LOAD loop's
    bound) and the input rows no output row reads (read and dropped at the end)."""
    need = [min(stride * oy + k - 1 - pad, hw - 1) for oy in range(out_hw)]
    loads = [need[0] + 1] + [b - a for a, b in zip(need, need[1:])]
    return {"need_offset": k - 1 - pad, "load_rows": max(loads), "drain_rows": hw - 1 - need[-1]}


def check_hls_output(out: str | Path, force: bool = False) -> None:
    """What ``generate_hls`` would refuse and can be told before the design exists, checked by the
    CLI before the work (resolving the source, exporting a checkpoint): ``out`` not writable; without
    ``force`` an existing ``hls/``, or an existing ``out`` that is no generator output (no cycles.json).
    Whether an existing output holds the same design is decided by ``generate_hls``."""
    out = Path(out)
    prepare_output(out, force=True)
    if force or not out.is_dir():
        return
    if (out / HLS_DIR).exists():
        raise ShiftPQError(f"{out / HLS_DIR}: already exists; pass --force to replace it (its contents are lost; "
                           f"if {out} holds another design, all of {out} is replaced), or choose another --out")
    if not (out / "cycles.json").is_file():
        prepare_output(out, force)


def generate_hls(tables: Tables, out: str | Path, par: int | None, force: bool = False,
                 log=lambda s: None) -> dict:
    """Write ``<out>/hls/`` (and ``<out>/tables/``, ``<out>/cycles.json``); returns cycles.json.

    An existing generator output built from the same tables and ``par`` (an RTL build, say) keeps its
    other files and gets ``hls/`` added (replacing an existing ``hls/`` needs ``force``); any other
    existing ``out`` is replaced as a whole, atomically, and only with ``force`` (atomic.prepare_output)."""
    out = Path(out)
    prepare_output(out, force=True)  # writable; whether replacing is allowed is decided below
    t0 = time.perf_counter()
    design = Design(tables, par)
    model = {**cycle_model(design.plan), "generator": generator_digest()}
    cyc_text = json.dumps(model, indent=1, sort_keys=True) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    # named as atomic_dir names its temporaries, so that one left by a killed run is removed as stale
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=temporary_prefix(out)) as scratch:
        save_tables(tables, Path(scratch) / "tables")  # the tables exactly as an RTL build holds them
        same = _same_cycle_model(out / "cycles.json", model) and _same_tree(Path(scratch) / "tables", out / "tables")
    if same and (out / HLS_DIR).exists() and not force:
        raise ShiftPQError(f"{out / HLS_DIR}: already exists; pass --force to replace it (its contents are lost)")
    if not same:
        prepare_output(out, force)  # another design (or not a generator output): replaced only with --force
    ctx = design.context()
    files = {f: render(f"hls/{f}.j2", **ctx) for f in FILES}
    log(f"rendered {len(files)} HLS files, {sum(len(v) for v in files.values()) / 1e6:.1f} MB, "
        f"{len(design.blocks)} blocks ({time.perf_counter() - t0:.1f} s)")
    if same:  # an output of the same tables and fold: add hls/ beside what is there
        with atomic_dir(out / HLS_DIR) as hls:
            _write(hls, files)
    else:
        with atomic_dir(out) as whole:
            save_tables(tables, whole / "tables")
            (whole / "cycles.json").write_text(cyc_text)
            (whole / HLS_DIR).mkdir()
            _write(whole / HLS_DIR, files)
    return model


def _write(d: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (d / name).write_text(text)


# cycles.json's fields that only an RTL build has: the FPGA family its RTL instantiates primitives of
# (the cycles are the same for every target, dsp.py)
RTL_ONLY_FIELDS = ("target",)


def _same_cycle_model(path: Path, model: dict) -> bool:
    """``path`` holds ``model``, but for the RTL's own fields: an output of the same design (an RTL
    build without multiplier pairs, whose cycles and latency are the HLS design's)."""
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(held, dict) and {k: v for k, v in held.items() if k not in RTL_ONLY_FIELDS} == model


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    return not mismatch and not errors
