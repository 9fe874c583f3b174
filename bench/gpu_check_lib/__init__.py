"""The parts of the GPU check (bench/gpu_check.py is its command line; bench/gpu_check.sh runs it on the GPU machine).

- plan.py      which sub-runs (rows), in which order, with which stage flags and time limits; the DeepSpeed variants
- runners.py   what runs inside one sub-run's process: a stage's own `main()` with the peak memory and the trainer
               captured (`run_stage`), the bare PyTorch loop used as the reference (`run_bare`), a random base model
- profile.py   torch.profiler around a few steps: time by kind of kernel, top kernels, how busy the device was
- report.py    gpu_results.json and gpu_results.md: the table, the throughput targets, where a step's time goes

These are plain modules of a script folder (bench/ is run in place, not installed): bench/ is on sys.path when
bench/gpu_check.py or bench/t4_fit.py runs.
"""
