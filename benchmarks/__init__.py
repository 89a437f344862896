"""Side-by-side speed of scratchformers against transformers (see __main__.py)."""
