"""What every layer shares: errors, safe file writes, precision, the allocator."""
