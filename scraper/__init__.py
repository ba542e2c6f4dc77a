"""Selenium image search, validated downloads and the scrape manifest; no torch imports."""
