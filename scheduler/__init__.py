"""Planning (walk, index, batches) and dispatch (feeding batches to workers)."""
