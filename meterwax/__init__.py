"""The application: its entry points (the `meterwax` command, the demo and its workload
generator, the text reports). It may import every other package; nothing imports it."""
