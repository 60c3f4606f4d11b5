"""Suite-wide settings: one torch thread, repeatable property-based tests.

The test models are tiny: torch's intra-op threads cost more in synchronisation than they save,
and on a loaded 2-core machine they spin against each other (measured: a 2-D fit took 12x the
CPU time with two threads). One thread makes the suite faster and its timings steadier.
"""

import os

import torch
from hypothesis import settings

torch.set_num_threads(1)

# Property-based tests draw the same examples on every run (CI must not pass or fail by chance);
# HYPOTHESIS_PROFILE=explore draws new ones, for hunting edge cases locally.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
