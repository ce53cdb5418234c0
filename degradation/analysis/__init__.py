"""What finished (or running) runs say, read from their folders only.

- results.py: the runs under a path, each once, and their labels; scalars.py: every logged
  point as one table; table.py: Table 6; measurements.py: what `responses` and `evaluate`
  stored in a run.
- study.py: the runs the claims are judged on; claims.py: the claims of Sec. 4.2, each with
  our numbers and a verdict; orderings.py: one ordering judged against the seeds' noise;
  gradients.py: the gradient norms for the figure and claim 8.
- figures.py: Figure 6, error against depth, the shortcut comparison and the gradient norms;
  responses.py: Figure 7.
- report.py: one HTML page of every figure and table; export.py: tidy CSV/Parquet.
- board.py: the TensorBoard study view; watch.py: progress of running sweeps.
"""
