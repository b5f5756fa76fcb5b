"""Rewriting a model by a Plan: decomposed chains, verification, the output gate and static cost."""
