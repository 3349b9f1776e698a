"""Source producers: pull feeds, APIs and files, normalise, de-duplicate, publish to the raw topics."""
