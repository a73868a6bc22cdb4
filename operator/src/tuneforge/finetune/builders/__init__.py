"""Pure builders of the FineTuneJob's children: no I/O, no kopf context, settings passed in."""
