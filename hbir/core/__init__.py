"""The base layer: configuration, errors, paths, file helpers and shared names. It imports nothing of the project,
so every other package may import it."""
