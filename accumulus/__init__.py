"""accumulus: accumulator-aware quantized networks to verified FPGA accelerators."""

__version__ = "0.1.0"
