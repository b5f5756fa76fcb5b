"""Adapters that let other tools drive ttcompile; each imports its tool only inside its own module."""
