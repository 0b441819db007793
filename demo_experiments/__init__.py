"""The demo's research: what its finetune costs and which look-ups its small LM learns (docs/demo-benchmarks.md).

Each module runs as `python -m demo_experiments.NAME --help`; results are recorded in
`results/` and in docs/demo-benchmarks.md.
"""
