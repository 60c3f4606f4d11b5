"""Suite-wide settings.

The test models are tiny: torch's intra-op threads cost more in synchronisation than they save,
and on a loaded 2-core machine they spin against each other (measured: a 2-D fit took 12x the
CPU time with two threads). One thread makes the suite faster and its timings steadier.
"""

import torch

torch.set_num_threads(1)
