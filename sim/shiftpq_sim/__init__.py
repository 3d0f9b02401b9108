"""cocotb test benches for ShiftPQ's generated hardware: stream driver and monitor (``axis``), a
scoreboard against the golden model (``scoreboard``), the network bench (``tb_network``) and the
runner that builds and runs it on Icarus or Verilator (``runner``)."""
