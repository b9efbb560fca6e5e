"""Data contracts: the warehouse layout, atomic storage, and the built features read back as matrices."""
