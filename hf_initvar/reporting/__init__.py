"""Figures and reports drawn from saved histories."""
