"""Dispatch: feeding planned batches to workers."""
