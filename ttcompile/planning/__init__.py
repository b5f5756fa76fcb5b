"""Planning: budgets, rank allocators and their solvers, and the Plan they produce."""
