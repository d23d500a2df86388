"""The wire protocol shared by every part: frame codec, envelope and typed messages (pure)."""
