"""ShiftPQ: GM filter pruning + APoT quantization of CIFAR-10 CNNs, compiled to shift-add hardware."""

__version__ = "0.1.0"
