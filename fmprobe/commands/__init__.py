"""Stage commands that live in their own module (``forecast``, ``select``, ...). Each module
defines one click command, imports only ``fmprobe.cli_common`` and click at module level (the
library is imported inside the command, so ``fmprobe --help`` stays fast), and is registered at
the bottom of ``fmprobe/cli.py`` with ``main.add_command``."""
