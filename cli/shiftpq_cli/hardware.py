"""The commands of the hardware stages (package ``shiftpq_hw``): gen (RTL or HLS C++ and the cycle
model) and synth (Yosys + nextpnr)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from shiftpq.cmdline import Result, progress
from shiftpq.errors import ShiftPQError


# -- shiftpq gen --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Generated(Result):
    """The accelerator written to ``out``: its PEs, cycles per image, utilization and inferences/s
    at 100 MHz (from its cycles.json), and the seconds the command took; with ``--device``, the
    device and the PAR chosen for it."""
    out: str
    pes: int
    cycles_per_image: int
    utilization: float
    inferences_per_s_100mhz: float
    seconds: float
    device: str | None = None
    par: int | None = None

    def lines(self) -> list[str]:
        fold = f" (PAR {self.par}, the fastest fold that fits {self.device})" if self.device else ""
        return [f"wrote {self.out}{fold}: {self.pes} PEs, {self.cycles_per_image} cycles per image, utilization "
                f"{self.utilization:.1%}, {self.inferences_per_s_100mhz:.0f} inferences/s at 100 MHz "
                f"({self.seconds:.1f} s)"]


def cmd_gen(a) -> Generated:
    from shiftpq.atomic import prepare_output
    from shiftpq_hw.dsp import DEFAULT_TARGET
    from shiftpq_hw.gen import DEFAULT_DSP_PAIRS, DEFAULT_PAR, HLS_DEFAULT_PAR, resolve_source
    if a.backend == "hls":
        from shiftpq_hw.hls import generate_hls as generate
    else:
        from shiftpq_hw.gen import generate
    if not (a.model or a.checkpoint or a.tables):
        raise ShiftPQError("give --model, --checkpoint or --tables")
    if a.device and a.backend == "hls":
        raise ShiftPQError(f"--device {a.device} sizes the RTL for an ECP5; with --backend hls give --par")
    if a.dsp_pairs and a.backend == "hls":
        raise ShiftPQError(f"--dsp-pairs {a.dsp_pairs} goes with the RTL backend (the HLS backend leaves multipliers "
                           "to the vendor tool)")
    if a.target and a.backend == "hls":
        raise ShiftPQError(f"--target {a.target} goes with the RTL backend (the HLS backend leaves multipliers to the "
                           "vendor tool)")
    if a.out or a.model:  # the output is known: check it before the work
        if a.backend == "hls":  # it may add hls/ to an RTL build of the same design: generate_hls decides
            from shiftpq_hw.hls import check_hls_output
            check_hls_output(a.out or os.path.join("build", a.model), a.force)
        else:
            prepare_output(a.out or os.path.join("build", a.model), a.force)
    t0 = time.perf_counter()
    log = progress("gen")
    tables = resolve_source(a.model, a.checkpoint, a.tables, a.seed)
    name = tables.model
    if a.model and name != a.model:
        raise ShiftPQError(f"--model {a.model}, but the {'tables' if a.tables else 'checkpoint'} hold a {name}")
    src = tables.source or {}
    log(f"{name} from {src.get('path') or src.get('note')} ({time.perf_counter() - t0:.1f} s)")
    par = None if a.par == "max" else (a.par or (HLS_DEFAULT_PAR if a.backend == "hls" else DEFAULT_PAR))
    out = a.out or os.path.join("build", name)
    target = a.target or DEFAULT_TARGET
    # the default fold has its pairs; a fold given by --par or --device, or the generic target (no ECP5
    # multipliers), has none unless --dsp-pairs says so
    default_fold = not (a.par or a.device) and target == DEFAULT_TARGET
    pairs = a.dsp_pairs if a.dsp_pairs is not None else DEFAULT_DSP_PAIRS if default_fold else 0
    fold = {} if a.backend == "hls" else {"device": a.device, "dsp_pairs": pairs,  # refused for HLS above
                                          "target": target}
    model = generate(tables, out, par, force=a.force, log=log, **fold)
    return Generated(out, model["pes"], model["cycles_per_image"], model["utilization"],
                     model["inferences_per_s"]["100MHz"], time.perf_counter() - t0, model.get("device"), model["par"])


# -- shiftpq synth ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Synthesized(Result):
    """Yosys + nextpnr's figures (``synth.synthesize``, also in ``path``); exit 1 when the design
    does not fit the device or a seed's nextpnr was stopped (``synth.STOPPED``)."""
    report: dict
    path: str

    @property
    def passed(self) -> bool:
        return bool(self.report["fits"])

    def lines(self) -> list[str]:
        if not self.passed:
            return []
        r = self.report
        lat = f", latency {r['latency_us']} us" if r["latency_us"] else " (latency: run make sim first)"
        lines = [f"{r['model']} on {r['device']}, seed {r['seed']}: {r['luts']} LUTs, {r['ffs']} FFs, {r['brams']} "
                 f"BRAMs, {r['dsps']} DSPs; Fmax {r['fmax_mhz']} MHz (target {r['freq_target_mhz']:g}); "
                 f"{r['inferences_per_s']:.0f} inferences/s{lat}"]
        if len(r.get("seeds") or ()) > 1:
            f, i = r["over_seeds"]["fmax_mhz"], r["over_seeds"]["inferences_per_s"]
            lines.append(f"over seeds {', '.join(str(s['seed']) for s in r['seeds'])}: Fmax min / median / max "
                         f"{f['min']} / {f['median']} / {f['max']} MHz, {i['min']:.0f} / {i['median']:.0f} / "
                         f"{i['max']:.0f} inferences/s (the worst seed above)")
        return [*lines, f"wrote {self.path}"]

    def problems(self) -> list[str]:
        from shiftpq_hw.synth import STOPPED
        r = self.report
        seed = f" (seed {r['seed']})" if len(r.get("seeds") or ()) > 1 else ""
        # a stopped seed was not placed: whether the design fits is not known
        verdict = "was not placed on" if (r["reason"] or "").startswith(STOPPED) else "does not fit"
        return [] if self.passed else [
            f"{r['model']} {verdict} {r['device']}{seed}: {r['reason']} (report: {self.path})"]


def cmd_synth(a) -> Synthesized:
    from shiftpq_hw.synth import synthesize
    r = synthesize(a.build, a.device, a.freq, a.seed, a.jobs, log=progress("synth"))
    return Synthesized(r, os.path.join(a.build, "synth", "report.json"))
