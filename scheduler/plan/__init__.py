"""Planning: walk the storage roots, index every file, cut batches."""
