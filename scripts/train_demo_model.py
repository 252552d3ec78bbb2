"""Rebuild the committed demo checkpoint: ``python scripts/train_demo_model.py [train-demo flags]``.

Same as ``python -m xdeepserve.train_demo --out src/xdeepserve/demo_model --seed 0`` (the defaults),
with the loss curve written to ``docs/demo_model_loss.png``. Then check it with
``benchmarks/demo_accuracy.py`` and ``benchmarks/demo_router_stats.py``.
"""

import sys

from xdeepserve.train_demo import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
