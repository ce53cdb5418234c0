"""CIFAR-10 for the runs: the files (cifar.py), which data a run used (fingerprint.py), and
the device-resident training stream and evaluation batches (stream.py)."""
