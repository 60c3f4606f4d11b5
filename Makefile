# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs
# into a project-local virtual environment first. torch 2.13.0 goes in before anything else so no
# package can pull a CUDA build of torch on its own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test lint bench gallery clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/flowkit --threads 1 fit datasets/two_moons.csv --flow nsf_coupling --transforms 4 --hidden 64 \
		--batch-size 128 --lr 3e-3 --epochs 60 --output out/two_moons.flowkit --plot out/two_moons.png
	$(BIN)/flowkit plot out/two_moons.flowkit --layers --output out/two_moons_layers.png
	$(BIN)/flowkit plot out/two_moons.flowkit --history --output out/two_moons_history.png

test: install
	$(BIN)/ruff check flowkit cli tests benchmarks datasets
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/sampling.py

# Every 2-D toy (maximum likelihood) and target (reverse KL) fitted by flowkit itself, drawn in one
# figure with a table of figures: benchmarks/results/gallery.{png,md,json} (15-35 min on one core).
gallery: install
	$(BIN)/python benchmarks/gallery.py

clean:
	rm -rf $(VENV) out
