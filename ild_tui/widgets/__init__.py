"""Dashboard widgets and the plain-Python views they draw."""
