"""The dashboard's screens: live run, runs, compare, dialogs."""
