"""Small shared utilities: atomic writes, JSON/JSONL files, names escaped for a terminal, image grids."""
