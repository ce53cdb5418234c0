"""What finished (or running) runs say, read from their folders only.

- results.py: runs and logged scalars as tables; Table 6.
- figures.py: Figures 1 and 6 (and the shortcut comparison); responses.py: Figure 7.
- report.py: one HTML page of every figure and table; export.py: tidy CSV/Parquet.
- board.py: the TensorBoard study view; watch.py: progress of running sweeps.
"""
