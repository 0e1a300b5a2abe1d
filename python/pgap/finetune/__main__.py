"""``python -m pgap.finetune`` (and ``torchrun ... -m pgap.finetune``): the pgap-finetune command."""
import sys

from .cli import main

sys.exit(main())
