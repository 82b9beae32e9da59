"""`python -m audit_tasks`: see audit_tasks.cli."""

import sys

from audit_tasks.cli import main

if __name__ == "__main__":
    sys.exit(main())
