"""The live run screen (``screen``) and its panels, one module each: ``heatmap`` (with ``inspector``),
``scores``, ``losses``, ``decision``, ``eventlog``; ``model`` is what they draw from."""
