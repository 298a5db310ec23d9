"""Reliability tests: shared helpers and the import path of the two-process harness."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / 'ros'):      # fault_matchers, node_harness, oracle_matchers
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
