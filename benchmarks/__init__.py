"""dslo's benchmarks and research tooling, a package run from the repository root:

    python -m benchmarks.speed --quick          # every preset end to end (benchmarks/speed.py)
    python -m benchmarks.head_speed             # the head stage by stage
    python -m benchmarks.refine_real --quick    # what the head is worth on real images
    python -m benchmarks.readout.select_readout # the readout-selection study (benchmarks/readout/)

Shared helpers are public in :mod:`benchmarks.common`; the scripts import only ``dslo`` and this
package. Not installed with dslo (the wheel holds ``src/dslo`` only), and not collected by pytest
(``tests/`` is the only test path; tests/test_benchmarks.py imports the package). Results and
what they mean: docs/benchmarks.md.
"""
