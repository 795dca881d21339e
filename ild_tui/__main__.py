from ild_tui.cli import main

main()
