"""The studies behind the head's default readout (docs/benchmarks.md §1b): which λ rule the fused
readout ships with, chosen on evidence families it is then reported on with one family held out.

    python -m benchmarks.readout.select_readout --help
    python -m benchmarks.readout.rule_statistics --help
"""
