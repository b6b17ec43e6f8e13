"""The process: serving under hypercorn, the multi-worker supervisor and logging."""
