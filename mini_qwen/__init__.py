"""mini_qwen: the shared pieces of the PT / SFT / DPO stage scripts.

Each module does one thing; the stage scripts at the repository root import them
and never each other.
"""
