"""From a command line to runs: Hydra composition (compose.py), then the plan of what each run
needs and its launch through Hydra's sweeper and launchers (plan.py), and on a machine
without a GPU the time the planned runs would take (estimate.py). The Hydra plugins in
hydra_plugins/degrade_launcher/ build on these modules; nothing here imports them.
"""
