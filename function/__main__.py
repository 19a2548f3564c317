"""``python -m function``: the operator command line, in ``function.cli``."""

from .cli import main

if __name__ == "__main__":
    main()
