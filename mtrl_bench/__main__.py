import sys

from mtrl_bench.cli import main

sys.exit(main())
