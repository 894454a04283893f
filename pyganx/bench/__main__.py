"""python -m pyganx.bench [ops] ..."""
import sys

from .cli import main

sys.exit(main())
