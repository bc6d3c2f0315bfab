"""Memory behind the input pipeline: the image cache (``data.cache``) and the reused
shared-memory blocks that carry batches from Grain workers to the main process."""
