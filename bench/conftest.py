import sys
from pathlib import Path

# The pure-Python oracle lives with the tests (tests/helpers/reference.py); the benchmarks
# use it as the baseline.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
