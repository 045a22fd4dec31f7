"""Make the toy task module (``engine_toy``) importable, also by spawned worker processes."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
