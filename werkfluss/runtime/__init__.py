"""The runtime: workflow code's world."""
