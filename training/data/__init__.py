"""The records training reads and writes: episodes, datasets, splits and the trace store."""
