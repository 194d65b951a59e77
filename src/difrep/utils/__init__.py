"""Small helpers every layer may import: atomic files and hashes, precision, config files, image grids."""
