"""``shiftpq sim`` (package ``shiftpq_sim``, and ``shiftpq_hw.hls_csim`` for the HLS C++): the
generated accelerator against the golden model, on the compiled Verilator harness, the cocotb bench
or in g++ C simulation; or seeded random networks (``--fuzz``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from dataclasses import dataclass

from shiftpq.cmdline import Result, progress
from shiftpq.errors import ShiftPQError

def _first_difference(f: dict) -> str:
    """The first value the design got wrong, located in the golden trace."""
    return (f"first difference from the golden trace (image {f['image']}): block {f['block']} (tensor "
            f"{f['tensor']}), pixel (y, x) = {tuple(f['pixel'])}, channel {f['channel']}: got {f['got']}, "
            f"want {f['want']}")


@dataclass(frozen=True)
class _Simulation(Result):
    """A simulation's results as its backend reports them (also in GEN_DIR/sim/)."""
    results: dict

    def json_text(self) -> str:
        return json.dumps(self.results, indent=1, sort_keys=True)


@dataclass(frozen=True)
class Simulated(_Simulation):
    """An RTL simulation of a generated design (``harness.run`` or ``runner.simulate``): passed when
    every class score equals the golden model's and the cycles per image equal cycles.json."""
    bench: str

    @property
    def passed(self) -> bool:
        return bool(self.results["passed"]) and self.results["cycles_match_model"] is not False

    def lines(self) -> list[str]:
        r = self.results
        if r.get("stopped"):
            return [f"{r['model']} on {r['simulator']} ({self.bench}): FAILED, the design stopped: "
                    + "; ".join(r["stopped"])]
        harness = self.bench == "harness"
        shards = f", {r['jobs']} shards" if harness else ""
        out = [f"{r['model']} on {r['simulator']} ({self.bench}{shards}): {r['images']} images, {r['mismatches']} "
               f"mismatches with the golden model, {r['cycles_per_image']} cycles per image (model "
               f"{r['model_cycles_per_image']}), {'PASSED' if self.passed else 'FAILED'}; build {r['build_s']} s, "
               f"{r['sim_cycles_per_s']:.0f} simulated cycles/s, {r['sim_wall_s'] if harness else r['wall_s_per_image']} "
               f"s {'in all' if harness else 'per image'}" + (f"; accuracy {r['accuracy']} %" if "accuracy" in r else "")]
        f = r.get("first_wrong")
        if f and f.get("block"):
            out.append(_first_difference(f))
        elif f:
            out.append(f"first wrong image {f['image']}: {f['note']}")
        return out


@dataclass(frozen=True)
class SimulatedHls(_Simulation):
    """The HLS C++ in g++ C simulation (``hls_csim.simulate_hls``) against the golden model."""

    @property
    def passed(self) -> bool:
        return bool(self.results["passed"])

    def lines(self) -> list[str]:
        r = self.results
        out = [f"{r['model']} HLS C++ in g++ C simulation ({r['shards']} shards): {r['images']} images, "
               f"{r['mismatches']} mismatches with the golden model, {'PASSED' if self.passed else 'FAILED'}; "
               f"{r['wall_s']} s, {r['images_per_s']} images/s" + (f"; accuracy {r['accuracy']} %" if "accuracy" in r else "")]
        f = r.get("first_wrong")
        if f:
            out.append(_first_difference(f) if "pixel" in f else
                       f"first difference from the golden trace (image {f['image']}): block {f['block']}: {f.get('note')}")
        return out


@dataclass(frozen=True)
class Fuzzed(Result):
    """``sim --fuzz N``: seeded random networks through tables -> RTL -> simulation; the seeds of those
    that were not bit-exact at the modelled cycles."""
    simulator: str
    bench: str
    networks: int
    failed_seeds: tuple[int, ...]

    def lines(self) -> list[str]:
        bad = list(self.failed_seeds)
        return [f"fuzz: {self.networks - len(bad)}/{self.networks} random networks bit-exact at the modelled cycles "
                f"({self.simulator}, {self.bench}){'; failed seeds: ' + str(bad) if bad else ''}"]

    def json_text(self) -> str:
        return json.dumps({"simulator": self.simulator, "bench": self.bench, "networks": self.networks,
                           "failed_seeds": list(self.failed_seeds), "passed": self.passed}, indent=1)

    @property
    def passed(self) -> bool:
        return not self.failed_seeds


def cmd_sim_hls(a) -> SimulatedHls:
    from shiftpq.data import load_split
    from shiftpq_hw.hls_csim import require_hls_build, simulate_hls
    if a.fuzz or not a.build:
        raise ShiftPQError("--backend hls: give --build GEN_DIR (a `shiftpq gen --backend hls` output); no --fuzz")
    rtl_only = [opt for opt, given in (("--waves", a.waves), ("--gap", a.gap), ("--stall", a.stall)) if given]
    if rtl_only:  # silently ignored, they would claim a test that never ran
        raise ShiftPQError(f"{rtl_only[0]}: an option of the RTL simulation; --backend hls (g++ C simulation) "
                           "has no waveform and no stream pauses")
    require_hls_build(a.build)
    images, labels = load_split(a.data_dir, "test", a.images)
    return SimulatedHls(simulate_hls(a.build, images.numpy(), labels.numpy(), a.jobs, progress=sys.stderr.isatty(),
                                     log=progress("sim")))


def _sim_bench(a) -> str:
    if a.bench == "harness" and a.simulator != "verilator":
        raise ShiftPQError(f"--bench harness runs on Verilator only, not --simulator {a.simulator}")
    if a.bench is None:
        return "harness" if a.simulator == "verilator" else "cocotb"
    return a.bench


def _require_current(a) -> None:
    """A --build made by these generator sources, unless --stale-ok (outputs.require_current)."""
    from shiftpq_hw.outputs import read_cycles, require_current
    if a.build and not a.fuzz and not a.stale_ok and (Path(a.build) / "cycles.json").is_file():
        require_current(a.build, read_cycles(a.build))  # a missing cycles.json: the backend's own checks say so


def cmd_sim(a) -> Simulated | SimulatedHls | Fuzzed:
    _require_current(a)
    if a.backend == "hls":
        return cmd_sim_hls(a)
    from shiftpq_sim.runner import fuzz, simulate
    log = progress("sim")
    bench = _sim_bench(a)
    if a.fuzz:
        runs = fuzz(list(range(a.first_seed, a.first_seed + a.fuzz)), a.simulator, a.fuzz_dir, log=log, bench=bench)
        bad = tuple(r["seed"] for r in runs if not r["passed"] or not r["cycles_match_model"])
        return Fuzzed(a.simulator, bench, len(runs), bad)
    if not a.build:
        raise ShiftPQError("give --build GEN_DIR (a `shiftpq gen` output) or --fuzz N")
    from shiftpq.data import load_split
    images, labels = load_split(a.data_dir, "test", a.images)
    if bench == "harness":
        from shiftpq_sim.harness import run
        r = run(a.build, images.numpy(), labels.numpy(), jobs=a.jobs, gap=a.gap, stall=a.stall, seed=a.seed,
                waves=a.waves, log=log)
    else:
        r = simulate(a.build, a.simulator, images.numpy(), labels.numpy(), waves=a.waves, gap=a.gap, stall=a.stall)
    return Simulated(r, bench)
