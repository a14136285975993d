"""`python -m luna_vault.cli` = the `luna-vault` command."""

import sys

from . import main

sys.exit(main())
