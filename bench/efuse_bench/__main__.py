"""python3 -m efuse_bench (bench/run)."""
import sys

from .cli import main

sys.exit(main())
