# The two commands of the README.  glibc malloc tuning must be in the environment before Python starts
# (faster CNN inference and training on a CPU; docs/performance.md, "Memory allocator").
PYTHON ?= python3
export MALLOC_MMAP_THRESHOLD_ = 4000000000
export MALLOC_TRIM_THRESHOLD_ = 4000000000

.PHONY: setup glyphs run table test lint readme

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

run: setup
	hellodd run

# the heavy-label presets' data: CJK font packages and Unihan (hellodd run --preset glyphs-100 | glyphs-1000)
glyphs:
	PYTHON=$(PYTHON) bash scripts/setup.sh --glyphs

# the paper's main table on the demo: IPC 1, 10 and 50 over one trajectory
table: setup
	hellodd run --ipc 1 10 50 --out runs/fashion-mnist-table

test: glyphs
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks
	lint-imports
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

# the README's result tables, rendered from the reports checked into docs/reports
readme:
	$(PYTHON) scripts/readme_tables.py
