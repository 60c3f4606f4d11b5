"""Regenerate the bundled 2-D data sets: ``python datasets/make_toys.py``.

Each CSV holds seeded draws from a flowkit toy generator, so the files are reproducible and the
demo runs on a real file rather than on data made on the fly.
"""

from pathlib import Path

from flowkit.data.toys import make_toy
from flowkit.io import save_table

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for name, rows in (("two_moons", 4000), ("pinwheel", 4000)):
        save_table(HERE / f"{name}.csv", make_toy(name, rows, seed=2026), ["x", "y"])
        print(f"wrote {HERE / f'{name}.csv'}")
