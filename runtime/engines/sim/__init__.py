"""The simulated SGLang worker cluster. See docs/replay.md for the model and its limits."""
