"""``python -m helpdesk_milter`` is the ``helpdesk-milter`` command."""

import sys

from .cli import main

sys.exit(main())
