"""mini_qwen: the shared pieces of the stage scripts (the table of them: mini_qwen/stages.py).

Each module does one thing; the stage scripts at the repository root import them
and never each other.
"""
