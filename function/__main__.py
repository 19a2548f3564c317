"""``python -m function``: the operator command line, in ``_cli``."""

from ._cli import main

if __name__ == "__main__":
    main()
