# Benchmarks (see benchmarks/RESULTS.md). `make bench`: the CPU set with quick settings, then RESULTS.md.
PYTHON ?= .venv/bin/python
BENCH := benchmarks

.PHONY: bench bench-full bench-gpu bench-collect

bench:
	$(PYTHON) $(BENCH)/bench_extraction.py --quick
	$(PYTHON) $(BENCH)/bench_latency.py --quick
	$(PYTHON) $(BENCH)/bench_finetune_step.py --quick
	$(PYTHON) $(BENCH)/bench_easyfsl.py --quick
	$(PYTHON) $(BENCH)/bench_pool.py --quick
	$(PYTHON) $(BENCH)/bench_fewshot_digits.py --quick
	$(PYTHON) $(BENCH)/bench_shift.py --quick
	$(PYTHON) $(BENCH)/bench_label_errors.py --quick
	$(PYTHON) $(BENCH)/bench_startup.py --quick
	$(PYTHON) $(BENCH)/bench_photos.py --quick
	$(PYTHON) $(BENCH)/bench_scale.py --quick
	$(PYTHON) $(BENCH)/bench_gpu.py
	$(PYTHON) $(BENCH)/collect.py

bench-full:
	$(PYTHON) $(BENCH)/bench_extraction.py --compile
	$(PYTHON) $(BENCH)/bench_latency.py
	$(PYTHON) $(BENCH)/bench_finetune_step.py
	$(PYTHON) $(BENCH)/bench_easyfsl.py
	$(PYTHON) $(BENCH)/bench_pool.py
	$(PYTHON) $(BENCH)/bench_fewshot_digits.py
	$(PYTHON) $(BENCH)/bench_shift.py
	$(PYTHON) $(BENCH)/bench_label_errors.py
	$(PYTHON) $(BENCH)/bench_startup.py
	$(PYTHON) $(BENCH)/bench_photos.py
	$(PYTHON) $(BENCH)/bench_scale.py
	$(PYTHON) $(BENCH)/bench_gpu.py
	$(PYTHON) $(BENCH)/collect.py

bench-gpu:
	$(PYTHON) $(BENCH)/bench_gpu.py --compile
	$(PYTHON) $(BENCH)/collect.py

bench-collect:
	$(PYTHON) $(BENCH)/collect.py
