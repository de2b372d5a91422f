"""`python -m hf_specdec.eval` and `accelerate launch -m hf_specdec.eval`."""

import sys

from .cli import main

sys.exit(main())
