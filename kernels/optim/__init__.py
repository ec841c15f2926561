"""Fused optimizer updates over flat buffers: one pass over memory, one call per step."""
