"""What finished (or running) runs say, read from their folders only.

- results.py: runs and logged scalars as tables; Table 6.
- claims.py: the claims of Sec. 4.2, each with our numbers and a verdict.
- figures.py: Figure 6, error against depth, the shortcut comparison and the gradient norms;
  responses.py: Figure 7.
- report.py: one HTML page of every figure and table; export.py: tidy CSV/Parquet.
- board.py: the TensorBoard study view; watch.py: progress of running sweeps.
"""
