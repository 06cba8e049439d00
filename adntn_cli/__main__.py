"""``python -m adntn_cli`` (and ``torchrun -m adntn_cli``): the ``adntn`` command."""

from .cli import main

main()
