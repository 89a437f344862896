"""The commands that use a trained model's folder: ``scratchformers eval`` (the recipe's
held-out metrics, :mod:`.evaluation`), ``generate`` (stream a continuation, :mod:`.generate`)
and ``export`` (write the transformers class it mirrors, :mod:`.export`), on top of
:mod:`.modeldir`, which opens a folder, finds its recipe and settings in run.json and imports
the model package its config.json names. ``scratchformers train`` is the loop
(:mod:`scratchformers.training.loop`); :mod:`scratchformers.training.cli` dispatches both.
"""
