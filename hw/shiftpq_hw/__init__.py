"""ShiftPQ hardware: Amaranth 0.5 components generated from the layer tables."""
