"""The validator node: applications run by consensus, the HTTP wire API, the node runner."""
