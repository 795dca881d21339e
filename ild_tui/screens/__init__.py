"""The dashboard's other screens: runs, compare, dialogs (the live run screen is ``ild_tui.live``)."""
