"""``python -m ild_tui.cli``: the ``ild`` command."""

from ild_tui.cli import main

main()
