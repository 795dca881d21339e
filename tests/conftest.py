import os

# Must be set before torch loads: spinning OpenMP threads slow torch 5-10x when pytest-xdist
# workers (or the engine subprocesses the tests start) share the two cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
