"""Reusable widgets of the studio (half-block images, loss plot, system monitor, nav bar)."""
