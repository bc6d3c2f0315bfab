"""Box, anchor and NMS operations."""
