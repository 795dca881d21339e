"""Widgets shared by the screens: braille charts, the run header, the palettes."""
