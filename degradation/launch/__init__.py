"""From a command line to runs: Hydra composition (compose.py), the plan of every run made
once (plan.py), what `train` and `sweep` do with it (session.py) and each job's task (run.py).
The Hydra plugins in hydra_plugins/degrade_launcher/ build on these modules, which find them
through the entry point they declare and never import them.
"""
