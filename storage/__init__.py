"""LevelDB storage: namespaced tables, atomic synced batches, the block store, the Merkle
state tree and the consensus' durable records. Knows nothing of consensus or ML."""
