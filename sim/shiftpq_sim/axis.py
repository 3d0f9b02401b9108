"""AXI4-Stream driver and monitor for cocotb 2.x: a source that sends frames of words (``tlast`` on a
frame's last word) and a sink that collects beats with the cycle they arrived in. Both can pause at
random (``gap`` / ``stall`` probabilities from a seeded generator) to exercise backpressure.
``watchdog`` fails a bench whose streams stop moving, naming the stream that stopped.
``style="amaranth"`` drives an Amaranth ``stream`` port instead (``i__payload``, ``i__valid``,
``i__ready``, no ``last``): the unit benches use it on single components."""
from __future__ import annotations

import random

from cocotb.triggers import ReadOnly, RisingEdge, Timer

CLOCK_NS = 10  # the benches' clock period


async def _sampled_high(signal, clk) -> bool:
    """Wait for the next rising clock edge; True if ``signal`` was 1 just before it. A 0 waits for
    the signal to rise first instead of polling every cycle; X (during reset) polls."""
    await ReadOnly()
    v = signal.value
    if v.is_resolvable and not int(v):
        await RisingEdge(signal)
        await ReadOnly()
        v = signal.value
    high = v.is_resolvable and bool(int(v))
    await RisingEdge(clk)
    return high


def _ports(dut, prefix: str, style: str):
    """(data, valid, ready, last or None) handles of one stream port."""
    if style == "axis":
        return tuple(getattr(dut, f"{prefix}_{n}") for n in ("tdata", "tvalid", "tready", "tlast"))
    if style == "amaranth":
        return (*(getattr(dut, f"{prefix}__{n}") for n in ("payload", "valid", "ready")), None)
    raise ValueError(f"stream style must be 'axis' or 'amaranth', got {style!r}")


class AxisSource:
    def __init__(self, dut, prefix: str, clk, gap: float = 0.0, seed: int = 0, style: str = "axis"):
        self.clk, self.gap, self.rng, self.prefix = clk, gap, random.Random(seed), prefix
        self.tdata, self.tvalid, self.tready, self.tlast = _ports(dut, prefix, style)
        self.tvalid.value = 0
        self.sent = 0  # words accepted so far
        self.total = None  # words to send, once send() started

    async def send(self, frames, log=None) -> None:
        """Each frame's words (bytes, or ints) in order, back to back, ``tlast`` on its last word."""
        frames = list(frames)
        self.total = sum(len(f) for f in frames)
        for i, frame in enumerate(frames):
            for j, b in enumerate(frame):
                if log and j % 512 == 0:
                    log.info(f"source: frame {i}, byte {j}")
                while self.gap and self.rng.random() < self.gap:
                    self.tvalid.value = 0
                    await RisingEdge(self.clk)
                self.tdata.value = b
                if self.tlast is not None:
                    self.tlast.value = int(j == len(frame) - 1)
                self.tvalid.value = 1
                while not await _sampled_high(self.tready, self.clk):
                    pass
                self.sent += 1
        self.tvalid.value = 0


class AxisSink:
    """Collects ``(tdata, tlast, cycle)`` per beat; ``cycle`` is the DUT's free-running counter."""

    def __init__(self, dut, prefix: str, clk, counter=None, stall: float = 0.0, seed: int = 1,
                 style: str = "axis"):
        self.clk, self.stall, self.rng, self.prefix = clk, stall, random.Random(seed), prefix
        self.tdata, self.tvalid, self.tready, self.tlast = _ports(dut, prefix, style)
        self.counter = counter
        self.beats: list[tuple[int, int, int]] = []
        self.tready.value = 0

    async def collect(self, n: int, signed: bool = True) -> list[tuple[int, int, int]]:
        """Run until ``n`` beats have arrived in total."""
        while len(self.beats) < n:
            ready = int(not (self.stall and self.rng.random() < self.stall))
            self.tready.value = ready
            await ReadOnly()
            v = self.tvalid.value
            if v.is_resolvable and not int(v):
                await RisingEdge(self.tvalid)  # idle: wait for the next beat rather than every edge
                await ReadOnly()
                v = self.tvalid.value
            valid = v.is_resolvable and bool(int(v))
            if valid and ready:
                v = self.tdata.value
                data = v.to_signed() if signed else v.to_unsigned()
                cyc = self.counter.value.to_unsigned() if self.counter is not None else -1
                self.beats.append((data, int(self.tlast.value) if self.tlast is not None else 0, cyc))
            await RisingEdge(self.clk)
        return self.beats


class StreamStopped(AssertionError):
    """A bench's streams stopped moving: the design hangs (a deadlock, a lost handshake)."""


async def watchdog(budget: int, sources: list[AxisSource], sink: AxisSink) -> None:
    """Raise ``StreamStopped`` once ``budget`` cycles pass without a beat on ``sink``, naming the
    stream that stopped: a source that still has words and took none in that time (its ``tready``
    stayed low), else the sink (no output beat). Runs beside the bench (``cocotb.triggers.select``);
    one timer per window, not an await per clock."""
    seen = (len(sink.beats), [s.sent for s in sources])
    while True:
        await Timer(budget * CLOCK_NS, unit="ns")
        now = (len(sink.beats), [s.sent for s in sources])
        if now[0] == seen[0]:
            stuck = [s for s, before in zip(sources, seen[1]) if s.total is not None and s.sent < s.total
                     and s.sent == before]
            if stuck:
                s = stuck[0]
                raise StreamStopped(f"{s.prefix} stopped: tready low for {budget} cycles while word {s.sent} of "
                                    f"{s.total} waits (no {sink.prefix} beat either; budget {budget} cycles)")
            raise StreamStopped(f"{sink.prefix} stopped: no output beat for {budget} cycles after beat "
                                f"{now[0]} (inputs taken: {', '.join(f'{s.prefix} {s.sent}/{s.total}' for s in sources)}; "
                                f"budget {budget} cycles)")
        seen = now
