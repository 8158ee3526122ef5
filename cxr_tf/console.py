"""What an app says while it works: one line on stderr before each step that takes seconds
(opening a dataset, building or loading a model, predicting a split), so that no app is
silent for long. stdout stays the app's result (its summary, or --json's one object).

    console.say(f"loading {path}")
"""

import sys


def say(line):
    """Prints `line` on stderr at once."""
    print(line, file=sys.stderr, flush=True)
